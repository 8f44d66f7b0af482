"""Command line: parse and check the flags, then hand the work to ``commands.py``.

Only the flags are parsed and checked before the heavy modules (torch, torchvision, matplotlib,
OpenCV) are imported, so ``--help`` and every flag error answer at once.
"""
from __future__ import annotations

import argparse
import os
import sys

import jobs
from errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    FlagError,
    UserError,
    install_signal_handlers,
    reason,
)
from recipes import (
    PANEL_FORMATS,
    SHIPPED_CLASSIFIER,
    TRAIN_RECIPES,
    DetectorTrainConfig,
    ExplainConfig,
    FineTuneConfig,
    TrainConfig,
    ViTTrainConfig,
    default,
)
from registry import DEFAULT_DET_ARCH, DET_ARCHS, DET_LAYERS, DET_METHODS, FILL_STRATEGIES, METHODS
from validation import Parser, check_args

# distributed.py's name in sys.modules: "camexplain.distributed" where installed (setup.py)
_DISTRIBUTED = f"{__package__}.distributed" if __package__ else "distributed"

HIDDEN_STRATEGIES = ("none", *FILL_STRATEGIES)

EXAMPLES = """examples:
  # heatmaps of 10 test images with the shipped Fashion-MNIST model (results/gradcam/)
  %(prog)s --mode test --save_path checkpoints/resnet18_fashion_mnist.pth --vis gradcam --vis_num 10
  # the leaderboard of two methods at two layers, two ways of hiding pixels (results/)
  %(prog)s --mode test --save_path checkpoints/resnet18_fashion_mnist.pth \\
      --vis gradcam,layercam --target_layer layer3,layer4 --hidden_strategy zero,blur
  # the model-randomisation sanity check of every method (results/sanity/)
  %(prog)s --mode test --save_path checkpoints/resnet18_fashion_mnist.pth --sanity --vis_num 8
  # explain the detections of the shipped scene detector on one scene (results/detection/)
  %(prog)s --det_img data/fashion_scenes/JPEGImages/000001.png \\
      --det_weights checkpoints/fasterrcnn_fashion_scenes.pth --det_method layercam
  # explain RetinaNet's COCO detections on a photo at two layers (weights from torch's hub cache)
  %(prog)s --det_img photo.jpg --det_arch retinanet_resnet50_fpn --det_layer layer3,layer4
  # train a ResNet-18 on Fashion-MNIST (checkpoints/, logs/)
  %(prog)s --mode train --dataset fashion_mnist --num_epochs 15
  # train the small vision transformer from scratch on Fashion-MNIST (AdamW, warm-up + cosine)
  %(prog)s --mode train --arch vit_small_cifar --dataset fashion_mnist \\
      --save_path checkpoints/vit_fashion_mnist.pth
  # fine-tune a torchvision model on your photos (my_photos/CLASS/*.jpg, or train/ and val/)
  %(prog)s --mode train --arch resnet18 --weights DEFAULT --data_dir my_photos/ \\
      --save_path checkpoints/my_resnet18.pth
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """A flag's default at the end of its help line, unless the line says it already or there
    is none to say (a switch, or a default that depends on the job); the examples and the
    jobs laid out as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def by_job(name: str, explain: bool = False) -> str:
    """A recipe flag's defaults, job by job, as ``recipes.py`` holds them."""
    parts = [f"default {default(TrainConfig, name)} training the CIFAR ResNet-18",
             f"{default(FineTuneConfig, name)} fine-tuning"]
    if any(f == name for f in DetectorTrainConfig.__dataclass_fields__):
        parts.append(f"{default(DetectorTrainConfig, name)} the detector")
    if default(ViTTrainConfig, name) != default(TrainConfig, name):
        parts.append(f"{default(ViTTrainConfig, name)} training {ViTTrainConfig.arch}")
    if explain:
        parts.append(f"{default(ExplainConfig, name)} explaining")
    return ", ".join(parts)


def strategy_list(text: str) -> str:
    """``--hidden_strategy``: ``none``, one strategy, or a comma list of them."""
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in HIDDEN_STRATEGIES[1:]]
    if text != "none" and unknown:
        raise argparse.ArgumentTypeError(
            f"unknown strategy '{unknown[0]}' (choose none, or one or a comma list of "
            f"{', '.join(HIDDEN_STRATEGIES[1:])})")
    return text


def build_parser() -> argparse.ArgumentParser:
    """All flags; their ranges and combinations are checked in ``validation.py``."""
    p = Parser(
        prog=jobs.PROG, description="See why a classifier or a detector decides what it decides: CAM-family "
                    "heatmaps of any torchvision classifier, your own model or the shipped "
                    "Fashion-MNIST ResNet-18; how far each map can be trusted (deletion / "
                    "insertion, a leaderboard, the sanity check); a map per detection of "
                    "torchvision's detectors; and training and fine-tuning the models.",
        formatter_class=HelpFormatter, epilog=EXAMPLES + "\n" + jobs.help_text())
    p.add_argument("--mode", choices=("train", "test"), default="test",
                   help="train a model (the classifier; the scene detector with --det_vis), or "
                        "test / explain one")

    g = p.add_argument_group("data and hardware")
    g.add_argument("--dataset", choices=("cifar10", "fashion_mnist"), default=None,
                   help="training: cifar10 when not given; test: the checkpoint's own dataset")
    g.add_argument("--data_dir", default="./data", help="where datasets are read/downloaded")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    g.add_argument("--precision", choices=("auto", "fp32"), default="auto",
                   help="auto: bf16/fp16 autocast where the hardware has it (training, test "
                        "accuracy, deletion/insertion, and the heatmaps of the methods validated "
                        "against fp32 there); fp32: never")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of training, of the random baseline and of the sanity check")
    g.add_argument("--out_dir", default="./results", help="where pictures and numbers go")

    g = p.add_argument_group("training")
    g.add_argument("--batch_size", type=int, default=None,
                   help="images per step in training; images per chunk when explaining "
                        f"({by_job('batch_size', explain=True)})")
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate: one-cycle for the CIFAR ResNet-18, warm-up + "
                        "cosine when fine-tuning, for the detector and for "
                        f"{ViTTrainConfig.arch} (AdamW) ({by_job('lr')})")
    g.add_argument("--num_epochs", type=int, default=None,
                   help=f"epochs of training ({by_job('num_epochs')})")
    g.add_argument("--weight_decay", type=float, default=None,
                   help="weight decay: SGD's, AdamW's for "
                        f"{ViTTrainConfig.arch} ({by_job('weight_decay')})")
    g.add_argument("--label_smoothing", type=float, default=None,
                   help="classifier training: share of each target spread over the classes "
                        f"({by_job('label_smoothing')})")
    g.add_argument("--save_path", default=None,
                   help="checkpoint written by training, read by testing (default: "
                        f"{default(TrainConfig, 'save_path')} for the CIFAR ResNet-18, "
                        f"{default(ViTTrainConfig, 'save_path')} for {ViTTrainConfig.arch}, "
                        "and when testing without it, the shipped classifier "
                        f"{SHIPPED_CLASSIFIER}; fine-tuning: "
                        f"{default(FineTuneConfig, 'save_path')}; the detector: "
                        f"{default(DetectorTrainConfig, 'save_path')})")
    g.add_argument("--save_half", action="store_true",
                   help="store the checkpoint's weights in fp16 without optimizer state")
    g.add_argument("--log_dir", default="./logs", help="metrics.csv and training_curves.png")
    g.add_argument("--val_fraction", type=float, default=None,
                   help="fine-tuning on a --data_dir without train/ and val/: share of each "
                        "class held out for validation, split by --seed (default: 0.1; refused "
                        "where the folder has its own val/)")
    g.add_argument("--resume", action="store_true",
                   help="training from scratch (a built-in arch or the detector): continue "
                        "the stopped run from its last finished epoch's state (<save_path "
                        "stem>.resume.pth), with the flags it was started with")
    g.add_argument("--det_scenes", type=int,
                   default=default(DetectorTrainConfig, "scenes_per_epoch"),
                   help="detector training: new Fashion-MNIST scenes per epoch")

    g = p.add_argument_group("models from anywhere (default: this tool's CIFAR ResNet-18 in "
                             "--save_path)")
    g.add_argument("--arch", default=None, metavar="NAME",
                   help="any torchvision classifier (resnet50, convnext_tiny, ...), or one "
                        "of this tool's built-in archs, which --mode train trains from scratch "
                        f"on --dataset: {', '.join(TRAIN_RECIPES)} (the small vision "
                        "transformer); when not given, the checkpoint's own")
    g.add_argument("--weights", default=None, metavar="NAME|FILE",
                   help="a torchvision weights name (DEFAULT, IMAGENET1K_V2, ...; read from "
                        "torch's hub cache, downloaded there when missing) or a file: a state "
                        "dict or a checkpoint this tool wrote. --arch without it: random weights")
    g.add_argument("--model", default=None, metavar="FILE.py:FUNCTION",
                   help="your own model: FUNCTION() in FILE.py returns the nn.Module (the "
                        "file's code runs, as with any Python import)")
    g.add_argument("--input_size", type=int, default=None,
                   help="the side of the model's square input, when --model or the weights do "
                        "not say (default: the weights' own, else 224)")
    g.add_argument("--token_grid", default=None, metavar="HxW",
                   help="the patch grid of a transformer's token layers ([B, T, C] outputs: T "
                        "= up to 8 leading extra tokens + H x W patch tokens), where it cannot "
                        "be inferred from the input size (default: inferred)")
    for name in ("mean", "std"):
        g.add_argument(f"--{name}", default=None, metavar="R,G,B",
                       help=f"input normalization {name} (default: the weights' own, else "
                            f"ImageNet's)")
    g.add_argument("--classes", default=None, metavar="FILE",
                   help="class names, one per line, in the model's output order (default: "
                        "the weights' own, ImageNet's for 1,000 outputs)")
    g.add_argument("--image_dir", default=None, metavar="DIR",
                   help="explain every image in this folder tree (read as the work goes)")
    g.add_argument("--list_layers", action="store_true",
                   help="print every layer with a spatial output and its map size, then stop")

    g = p.add_argument_group("heatmaps")
    g.add_argument("--vis", default="none",
                   help=f"none, a method ({', '.join(METHODS)}), a comma list of them, or all "
                        "(those that apply to the model at the layer: rollout only to a vision "
                        "transformer, CAM only before global pooling + one linear layer)")
    g.add_argument("--vis_num", type=int, default=None,
                   help="how many images to explain (default: the first "
                        f"{default(ExplainConfig, 'num_images')} of the test split, of an image "
                        "folder or of --image_dir; every --image)")
    g.add_argument("--panel_format", default=None, choices=PANEL_FORMATS,
                   help="each image's panel as png (lossless) or jpg (JPEG quality 95: a few "
                        "times smaller and faster to write, for large folders; default "
                        f"{default(ExplainConfig, 'panel_format')})")
    g.add_argument("--target", default="pred", metavar="pred|gt|CLASS",
                   help="explain the predicted class, the true class, or a class by name or "
                        "index (with --image / --image_dir)")
    g.add_argument("--target_layer", default="auto",
                   help="auto (layer4 for resnet18_cifar, else the last layer with a spatial "
                        "map; for a transformer the last whose patch tokens reach the logits), "
                        "or any module name (layer4, features.denseblock4, "
                        "layer4.2.conv3; see --list_layers); with --hidden_strategy or --sanity "
                        "a comma list such as layer3,layer4. rollout reads every attention "
                        "block and takes no layer")
    g.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="explain your own image (repeatable)")
    g.add_argument("--sanity", action="store_true",
                   help="cascading model-parameter randomisation test of the --vis methods "
                        "(all if none) on the first --vis_num test images or on --image")
    g.add_argument("--cam_batch_size", type=int, default=256,
                   help="Score-CAM / Ablation-CAM: masked or ablated inputs per forward pass")

    g = p.add_argument_group("deletion / insertion")
    g.add_argument("--hidden_strategy", default="none", type=strategy_list,
                   help="how hidden pixels are filled: none, or one or a comma list of "
                        f"{', '.join(HIDDEN_STRATEGIES[1:])}; anything but none runs the "
                        "evaluation")
    g.add_argument("--steps", type=int, default=100, help="points per curve minus one")
    g.add_argument("--num_eval", type=int, default=100,
                   help="correctly classified test images to evaluate")
    g.add_argument("--eval_batch_size", type=int, default=256,
                   help="masked images per forward pass")

    g = p.add_argument_group("detection (torchvision's detectors)")
    g.add_argument("--det_vis", action="store_true", help="explain a detector's detections")
    g.add_argument("--det_img", default=None,
                   help="one image (implies --det_vis); without it, PASCAL VOC 2007 test")
    g.add_argument("--det_weights", default=None,
                   help="the detector: the shipped scene detector "
                        "checkpoints/fasterrcnn_fashion_scenes.pth, a checkpoint trained here, or "
                        "a state dict in torchvision's COCO layout; when not given, torchvision's "
                        "COCO Faster R-CNN (downloaded into torch's hub cache). With --mode train "
                        "--det_vis: a scene-detector checkpoint to start training from")
    g.add_argument("--det_arch", default=DEFAULT_DET_ARCH, metavar="NAME",
                   help=f"torchvision's COCO detector to explain: {', '.join(DET_ARCHS)} "
                        "(default: %(default)s); --det_weights is then a state dict of that "
                        "layout, else its COCO weights come from torch's hub cache. Keypoint "
                        "and Mask R-CNN are not supported")
    g.add_argument("--det_layer", default=None,
                   help=f"the backbone layer(s), a comma list: {', '.join(DET_LAYERS)} for the "
                        "ResNet-50 detectors and the scene detector; stride8, stride16, "
                        "stride32 for the MobileNet-v3 Faster R-CNNs and SSD300; stride16, "
                        "stride32, stride64 for SSDlite (default: the deepest for the FPN "
                        "detectors, the first for the SSDs, whose every detection depends on "
                        "it)")
    g.add_argument("--det_method", default="gradcam", choices=DET_METHODS,
                   help="how a detection's map is made: a gradient method combines a layer's "
                        "activation with the detection score's gradient; drise (D-RISE) weights "
                        "random masks of the input by how well the masked image's detections "
                        "match the detection (no layer, no gradient; --det_masks passes)")
    g.add_argument("--det_explain_missed", action="store_true",
                   help="VOC-style runs: explain every ground-truth object that no detection "
                        "found (its best proposal's score, and whether the miss is one of "
                        "localisation, classification or suppression)")
    g.add_argument("--det_masks", type=int, default=1000,
                   help="D-RISE: random masks per image (16 masked copies per detector pass)")
    g.add_argument("--det_score_thresh", type=float, default=None,
                   help="explain detections scoring at least this (default: the "
                        "checkpoint's own threshold; 0.5 for COCO)")
    g.add_argument("--det_max", type=int, default=20, help="detections explained per image")
    g.add_argument("--det_per_box", action="store_true", help="one panel per detection too")
    g.add_argument("--det_num", type=int, default=200, help="VOC images to process")
    g.add_argument("--det_min_size", type=int, default=None,
                   help="detector input: shorter side in pixels (default: the detector's own, "
                        "800, or 320 for the *_320_* and SSDlite, 300 for SSD300; the SSDs "
                        "take a square of that side; smaller is faster on a CPU and less "
                        "accurate)")
    g.add_argument("--voc_path", default="./data/VOCtest_06-Nov-2007.tar",
                   help="the VOC 2007 test tar, or a folder in the VOC layout (an extracted "
                        "VOCdevkit, or the Fashion-MNIST scenes in data/fashion_scenes)")
    g.add_argument("--make_scenes", default=None, metavar="DIR",
                   help="write --det_num Fashion-MNIST test scenes (test split only) in the VOC "
                        "layout to DIR, then stop")

    g = p.add_argument_group("explorer (a local web page)")
    g.add_argument("--serve", action="store_true",
                   help="explore your images in a browser: the classifier of --save_path / "
                        "--arch / --weights / --model (default: the shipped one) and the "
                        "detector of --det_weights / --det_arch (default: the shipped scene "
                        "detector); offline, until Ctrl-C")
    g.add_argument("--port", type=int, default=7860, help="the explorer's port (0: any free one)")
    g.add_argument("--host", default="127.0.0.1",
                   help="the explorer's address to listen on, IPv4 or IPv6 (0.0.0.0 or ::: "
                        "every interface)")
    return p


def parser_defaults(parser: argparse.ArgumentParser) -> dict[str, object]:
    """Each flag's default, by its name in the parsed flags."""
    return {a.dest: a.default for a in parser._actions
            if a.dest != argparse.SUPPRESS and a.default != argparse.SUPPRESS}


def report_error(line: str, code: int) -> int:
    """Print a user error ``line`` on stderr and return its exit status. Under ``torchrun`` an
    error before the processes joined (a flag, a path) is the same on every process of a
    machine: local rank 0 alone prints it, the others exit 0, so the user reads it once and
    ``torchrun`` reports one failed process. After joining every rank prints its own."""
    joined = sys.modules.get(_DISTRIBUTED)   # imported only once the flags were good
    if joined is not None:
        quiet = joined.quiet_before_join()
    else:
        quiet = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 \
            and os.environ.get("LOCAL_RANK", "0") != "0"
    if quiet:
        return 0
    print(line, file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Parse, check every flag and path, run; a user error is one ``error:`` line on stderr
    and its exit code (see ``errors.py``), never a traceback. The heavy modules are imported
    only once the flags are known to be good."""
    install_signal_handlers()   # SIGTERM ends like Ctrl-C: temporaries removed, one line
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        check_args(args, parser_defaults(parser))
        import commands
        import distributed
        import outputs
        outputs.written.clear()
        commands.configure_console()
        with distributed.session(args.device):
            code = commands.run(args)
            commands.finish(args)   # the run's report.html and manifest
            return code
    except FlagError as exc:
        return report_error(f"error: {exc} (see {jobs.PROG} --help)", exc.exit_code)
    except UserError as exc:
        return report_error(f"error: {exc}", exc.exit_code)
    except OSError as exc:   # reading or writing failed where no module named the file
        print(f"error: {exc.filename or 'a file'}: {exc.strerror or reason(exc)}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _exit(code: int) -> None:
    """Leave with ``code``; a rank whose process group a failure left open leaves at once
    (see ``distributed.exit_now``)."""
    joined = sys.modules.get(_DISTRIBUTED)
    if joined is not None:
        joined.exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
