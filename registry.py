"""The names the command line accepts, without importing torch: heatmap methods, hiding
strategies, detection methods and layers.

This is the one place that lists the methods. ``explain.EXPLAINERS`` builds its classes from
``METHODS`` on first use, so ``python main.py --help`` and every flag error can check a name
without loading PyTorch.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from errors import ParamError

# name -> (module, class, display title)
METHODS: dict[str, tuple[str, str, str]] = {
    "cam": ("cam", "CAM", "CAM"),
    "gradcam": ("gradcam", "GradCAM", "Grad-CAM"),
    "gradcampp": ("gradcam", "GradCAMPlusPlus", "Grad-CAM++"),
    "xgradcam": ("gradcam", "XGradCAM", "XGrad-CAM"),
    "hirescam": ("gradcam", "HiResCAM", "HiResCAM"),
    "layercam": ("gradcam", "LayerCAM", "LayerCAM"),
    "scorecam": ("gradfree", "ScoreCAM", "Score-CAM"),
    "ablationcam": ("gradfree", "AblationCAM", "Ablation-CAM"),
    "eigencam": ("gradfree", "EigenCAM", "Eigen-CAM"),
    "guidedgradcam": ("gradcam", "GuidedGradCAM", "Guided Grad-CAM"),
    "rollout": ("rollout", "Rollout", "Attention rollout"),
}
TITLES: dict[str, str] = {name: title for name, (_, _, title) in METHODS.items()}

# The baseline maps every leaderboard and sanity check adds (evaluate.BASELINES makes them)
BASELINE_TITLES: dict[str, str] = {"random": "Random (baseline)",
                                   "centre": "Centre prior (baseline)"}

# The methods that read a vision transformer's attention instead of one layer's map: they use
# every attention block (shown as ``ALL_BLOCKS`` where the others show their layer) and apply
# only to a model with such blocks; ``all`` takes them where the model has them.
ATTENTION_METHODS: tuple[str, ...] = ("rollout",)
LAYER_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m not in ATTENTION_METHODS)
ALL_BLOCKS = "all blocks"

# How hidden pixels are filled in deletion / insertion (evaluate.fill_pixels implements them).
FILL_STRATEGIES = ("zero", "gray", "mean", "blur", "blur_rise")

# Detections: the methods that explain one detection (the gradient ones at a backbone stage,
# D-RISE from the input pixels), and the backbone stages.
DET_METHODS = ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "drise")
DET_TITLES = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "xgradcam": "XGrad-CAM",
              "hirescam": "HiResCAM", "layercam": "LayerCAM", "drise": "D-RISE"}
DET_LAYERS = ("layer2", "layer3", "layer4")

# The torchvision detectors that --det_arch explains: name -> (family, backbone). Families:
# ``fasterrcnn`` (two-stage: the proposal's class logit), ``retinanet``, ``fcos`` and ``ssd``
# (one-stage: the class logit at the anchor the detection came from). Keypoint and Mask R-CNN
# are not among them.
DEFAULT_DET_ARCH = "fasterrcnn_resnet50_fpn"
DET_ARCHS: dict[str, tuple[str, str]] = {
    "fasterrcnn_resnet50_fpn": ("fasterrcnn", "resnet"),
    "fasterrcnn_resnet50_fpn_v2": ("fasterrcnn", "resnet"),
    "fasterrcnn_mobilenet_v3_large_fpn": ("fasterrcnn", "mobilenet_fpn"),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("fasterrcnn", "mobilenet_fpn"),
    "retinanet_resnet50_fpn": ("retinanet", "resnet"),
    "retinanet_resnet50_fpn_v2": ("retinanet", "resnet"),
    "fcos_resnet50_fpn": ("fcos", "resnet"),
    "ssd300_vgg16": ("ssd", "vgg"),
    "ssdlite320_mobilenet_v3_large": ("ssd", "ssdlite"),
}

# Each backbone's explainable layers, highest resolution first: --det_layer name -> module path
# in the detector. ResNet: its stages (strides 8, 16, 32); MobileNet-v3 (FPN): the last block
# at strides 8, 16 and 32; SSD300's VGG-16: conv4_3 (stride 8), fc7 (16) and conv8_2 (32);
# SSDlite's MobileNet-v3: the expansion of the C4 block (16), the last conv (32) and the first
# extra block (64).
DET_BACKBONE_LAYERS: dict[str, dict[str, str]] = {
    "resnet": {name: f"backbone.body.{name}" for name in DET_LAYERS},
    "mobilenet_fpn": {"stride8": "backbone.body.6", "stride16": "backbone.body.12",
                      "stride32": "backbone.body.16"},
    "vgg": {"stride8": "backbone.features", "stride16": "backbone.extra.0",
            "stride32": "backbone.extra.1"},
    "ssdlite": {"stride16": "backbone.features.0", "stride32": "backbone.features.1",
                "stride64": "backbone.extra.0"},
}
# The layer --det_layer defaults to. The FPN backbones' deepest stage reaches every detection
# through the top-down path; an SSD head reads each level straight from the backbone, so a
# detection from a level depends only on the layers before it: its default is the first
# layer, on which every detection depends.
DET_DEFAULT_LAYERS = {"resnet": "layer4", "mobilenet_fpn": "stride32", "vgg": "stride8",
                      "ssdlite": "stride16"}

# The smallest input side a detector runs at (SSD300's last 3x3 convolutions need a 3x3 map).
DET_MIN_SIZES = {"ssd300_vgg16": 268}


def det_layers(arch: str) -> tuple[str, ...]:
    """The --det_layer names of a detector of ``DET_ARCHS``, highest resolution first."""
    return tuple(DET_BACKBONE_LAYERS[DET_ARCHS[arch][1]])


def det_arch(name: str) -> str:
    """``name`` if it is one of ``DET_ARCHS``; otherwise a ParamError (``arch``) naming the
    close ones (all of them when none is close)."""
    if name in DET_ARCHS:
        return name
    import difflib
    close = [a for a in DET_ARCHS if name.strip() and name.strip().lower() in a]
    close += [a for a in difflib.get_close_matches(name, DET_ARCHS, n=4, cutoff=0.6)
              if a not in close]
    hint = (f"close names: {', '.join(close)}" if close else
            f"known: {', '.join(DET_ARCHS)}")
    raise ParamError("arch", f"{{param}}: unknown detector '{name}' ({hint})")


def comma_list(spec: str) -> list[str]:
    """``a, b,a`` -> ``["a", "b"]``: the names in order, blanks and repeats dropped."""
    return list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))


def parse_names(spec: str, param: str, noun: str, known: Sequence[str] | None = None,
                everything: str | None = None) -> list[str]:
    """The names of a comma list, each checked against ``known`` (any name when None);
    ``everything`` (such as ``all``) stands for all of ``known``. Errors name ``param``."""
    if everything is not None and spec.strip() == everything and known is not None:
        return list(known)
    names = comma_list(spec)
    if not names:
        raise ParamError(param, f"{{param}} names no {noun}")
    unknown = [name for name in names if known is not None and name not in known]
    if unknown:
        extra = f", {everything}" if everything else ", or a comma list"
        raise ParamError(param, f"{{param}}: unknown {noun} '{unknown[0]}' (known: "
                                f"{', '.join(known)}{extra})")
    return names


def names_of(value: str | Sequence[str], param: str, noun: str,
             known: Sequence[str] | None = None, everything: str | None = None) -> list[str]:
    """A library parameter that takes names: a string (one name or a comma list, as on the
    command line) or a sequence of names, each checked as :func:`parse_names` does. A string
    is never split into its letters, and a name that is not known is an error naming
    ``param``, never a silent omission."""
    if isinstance(value, str):
        return parse_names(value, param, noun, known, everything)
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ParamError(param, f"{{param}} {value!r}: expected a list of {noun} names")
    return parse_names(",".join(value), param, noun, known, everything)


def check_number(value: object, param: str, low: float, high: float | None = None,
                 integer: bool = False) -> None:
    """A library parameter that is a finite number in ``[low, high]`` (an integer when
    ``integer``), or a :class:`ParamError` saying what it got and what it takes."""
    kind = "an integer" if integer else "a number"
    ok = (isinstance(value, int) if integer else isinstance(value, (int, float)))
    ok = ok and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (high is not None and value > high):
        span = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise ParamError(param, f"{{param}} is {value!r}; it takes {kind} {span}")


def parse_methods(spec: str) -> list[str]:
    """``gradcam`` / ``cam,gradcam`` / ``all`` -> method names, each checked, no repeats."""
    return parse_names(spec, "methods", "heatmap method", list(METHODS), everything="all")


def parse_layers(spec: str, known: Sequence[str] | None = None) -> list[str]:
    """``layer4`` / ``layer3,layer4`` -> layer names, in order, without repeats; checked against
    ``known`` where the caller knows the choices (the detector's backbone stages)."""
    return parse_names(spec, "layers", "layer", known)


def det_default_layer(arch: str) -> str:
    """The --det_layer a detector of ``DET_ARCHS`` is explained at when none is given."""
    return DET_DEFAULT_LAYERS[DET_ARCHS[arch][1]]


def parse_det_layers(spec: str, arch: str = DEFAULT_DET_ARCH) -> list[str]:
    """``--det_layer``'s names, each checked against the layers of the detector ``arch``."""
    return parse_names(spec, "layers", f"{arch} layer", det_layers(arch))


def parse_strategies(spec: str) -> list[str]:
    """``zero`` / ``zero,blur`` -> hiding strategies, each checked, no repeats."""
    return parse_names(spec, "strategies", "strategy", FILL_STRATEGIES)
