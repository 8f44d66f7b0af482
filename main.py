"""Command line: parse the flags and hand the work to the module that does it.

Examples::

    python main.py --mode train --dataset fashion_mnist --num_epochs 15
    python main.py --mode test --save_path ./checkpoints/resnet_best.pth --vis cam --vis_num 10
    python main.py --mode test --save_path ./checkpoints/resnet_best.pth --vis cam --hidden_strategy zero
    python main.py --mode test --det_vis --det_img test.png
"""
from __future__ import annotations

import argparse
import sys

import detection
import distributed
import evaluate
import explain
import outputs
import sanity
import train_detector
from data import info_from_meta, load_split
from errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    FlagError,
    UserError,
    install_signal_handlers,
    reason,
)
from model import load_model
from runtime import resolve_device
from train import run_test, run_training
from validation import Parser, check_args

HIDDEN_STRATEGIES = ("none", *evaluate.FILL_STRATEGIES)


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
        description="Train and test a CIFAR ResNet-18, explain it with CAM / Grad-CAM, "
                    "measure the explanations, and explain Faster R-CNN detections.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=("train", "test"), default="test")

    g = p.add_argument_group("data and hardware")
    g.add_argument("--dataset", choices=("cifar10", "fashion_mnist"), default=None,
                   help="training: default cifar10; test: the checkpoint's own dataset")
    g.add_argument("--data_dir", default="./data", help="where datasets are read/downloaded")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    g.add_argument("--precision", choices=("auto", "fp32"), default="auto",
                   help="auto: bf16/fp16 autocast where the hardware has it (training, test "
                        "accuracy, deletion/insertion); fp32: never")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out_dir", default="./results", help="where pictures and numbers go")

    g = p.add_argument_group("training")
    g.add_argument("--batch_size", type=int, default=128)
    g.add_argument("--lr", type=float, default=0.1, help="peak learning rate (one-cycle)")
    g.add_argument("--num_epochs", type=int, default=30)
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument("--label_smoothing", type=float, default=0.1)
    g.add_argument("--save_path", default="./checkpoints/resnet_best.pth",
                   help="checkpoint written by training, read by testing")
    g.add_argument("--save_half", action="store_true",
                   help="store the checkpoint's weights in fp16 without optimizer state")
    g.add_argument("--log_dir", default="./logs", help="metrics.csv and training_curves.png")
    g.add_argument("--resume", action="store_true",
                   help="detector training: continue from the last finished epoch's state "
                        "(<save_path stem>.resume.pth)")
    g.add_argument("--det_scenes", type=int, default=4000,
                   help="detector training: new Fashion-MNIST scenes per epoch")

    g = p.add_argument_group("heatmaps")
    g.add_argument("--vis", default="none",
                   help="none, a method (cam, gradcam, gradcampp, xgradcam, hirescam, layercam, "
                        "scorecam, ablationcam, eigencam), a comma list of them, or all")
    g.add_argument("--vis_num", type=int, default=20, help="how many test images to explain")
    g.add_argument("--target", choices=("pred", "gt"), default="pred",
                   help="explain the predicted class or the true class")
    g.add_argument("--target_layer", default="layer4",
                   help="layer1..layer4 or any module name of the model; with --hidden_strategy "
                        "or --sanity a comma list such as layer3,layer4")
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

    g = p.add_argument_group("detection (Faster R-CNN)")
    g.add_argument("--det_vis", action="store_true", help="explain Faster R-CNN detections")
    g.add_argument("--det_img", default=None,
                   help="one image (implies --det_vis); without it, PASCAL VOC 2007 test")
    g.add_argument("--det_weights", default=None, help="a state-dict file for the detector")
    g.add_argument("--det_layer", default="layer4", help="layer2, layer3 or layer4 (comma list)")
    g.add_argument("--det_method", default="gradcam",
                   choices=("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"),
                   help="how a detection's gradient and a layer's activation make its map")
    g.add_argument("--det_score_thresh", type=float, default=None,
                   help="explain detections scoring at least this (default: the checkpoint's "
                        "own threshold; 0.5 for COCO)")
    g.add_argument("--det_max", type=int, default=20, help="detections explained per image")
    g.add_argument("--det_per_box", action="store_true", help="one panel per detection too")
    g.add_argument("--det_num", type=int, default=200, help="VOC images to process")
    g.add_argument("--det_min_size", type=int, default=800,
                   help="detector input: shorter side in pixels (torchvision's 800; smaller is "
                        "faster on a CPU and less accurate)")
    g.add_argument("--voc_path", default="./data/VOCtest_06-Nov-2007.tar",
                   help="the VOC 2007 test tar, or a folder in the VOC layout (an extracted "
                        "VOCdevkit, or the Fashion-MNIST scenes in data/fashion_scenes)")
    g.add_argument("--make_scenes", default=None, metavar="DIR",
                   help="write --det_num Fashion-MNIST test scenes (test split only) in the VOC "
                        "layout to DIR, then stop")
    return p


def dispatch(args: argparse.Namespace) -> int:
    """Run what the flags ask for; user errors surface as ``UserError``."""
    if (args.det_vis or args.det_img or args.image or args.make_scenes or args.sanity) \
            and not distributed.world().is_main:
        return 0  # under torchrun rank 0 alone does the jobs that are not split across ranks
    if args.mode == "train" and args.det_vis:
        train_detector.run_training(args)
        return 0
    if args.mode == "train":
        run_training(args)
        return 0
    if args.make_scenes:
        train_detector.write_test_scenes(args.data_dir, args.make_scenes, args.det_num)
        return 0
    device = resolve_device(args.device)
    if args.det_vis or args.det_img:
        return detection.run(args, device)

    model, meta = load_model(args.save_path, device)
    info = info_from_meta(meta, args.dataset, num_outputs=model.fc.out_features)
    if args.sanity and args.image:
        return sanity.run(model, info, None, device, args)
    if args.image:
        return explain.run_images(model, info, device, args)
    split = load_split(info.name, args.data_dir, train=False)
    split.info = info
    if args.sanity:
        return sanity.run(model, info, split, device, args)
    if args.hidden_strategy != "none":
        return evaluate.run(model, split, device, args)
    if args.vis != "none":
        return explain.run_dataset(model, split, device, args)
    run_test(model, split, device, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse, check every flag and path, run; a user error is one ``error:`` line on stderr
    and its exit code (see ``errors.py``), never a traceback."""
    outputs.written.clear()
    install_signal_handlers()   # SIGTERM ends like Ctrl-C: temporaries removed, one line
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
        with distributed.session(args.device):
            code = dispatch(args)
            outputs.finish_run(args.log_dir if args.mode == "train" else args.out_dir,
                               announce=distributed.world().is_main)
            return code
    except FlagError as exc:   # under torchrun printed once (distributed.report_error)
        return distributed.report_error(f"error: {exc} (see python main.py --help)",
                                        exc.exit_code)
    except UserError as exc:
        return distributed.report_error(f"error: {exc}", exc.exit_code)
    except OSError as exc:   # reading or writing failed where no module named the file
        print(f"error: {exc.filename or 'a file'}: {exc.strerror or reason(exc)}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
