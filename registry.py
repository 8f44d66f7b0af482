"""The names the command line accepts, without importing torch: heatmap methods, hiding
strategies, detection methods and layers.

This is the one place that lists the methods. ``explain.EXPLAINERS`` builds its classes from
``METHODS`` on first use, so ``python main.py --help`` and every flag error can check a name
without loading PyTorch.
"""
from __future__ import annotations

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
}
TITLES: dict[str, str] = {name: title for name, (_, _, title) in METHODS.items()}

# Methods that take a chunk size for their extra forward passes (Score-CAM, Ablation-CAM).
CHUNKED = frozenset({"scorecam", "ablationcam"})

# How hidden pixels are filled in deletion / insertion (evaluate.fill_pixels implements them).
FILL_STRATEGIES = ("zero", "gray", "mean", "blur", "blur_rise")

# Detections: the methods that explain one detection (the gradient ones at a backbone stage,
# D-RISE from the input pixels), and the backbone stages.
DET_METHODS = ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "drise")
DET_TITLES = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "xgradcam": "XGrad-CAM",
              "hirescam": "HiResCAM", "layercam": "LayerCAM", "drise": "D-RISE"}
DET_LAYERS = ("layer2", "layer3", "layer4")


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


def parse_methods(spec: str) -> list[str]:
    """``gradcam`` / ``cam,gradcam`` / ``all`` -> method names, each checked, no repeats."""
    return parse_names(spec, "methods", "heatmap method", list(METHODS), everything="all")


def parse_layers(spec: str, known: Sequence[str] | None = None) -> list[str]:
    """``layer4`` / ``layer3,layer4`` -> layer names, in order, without repeats; checked against
    ``known`` where the caller knows the choices (the detector's backbone stages)."""
    return parse_names(spec, "layers", "layer", known)


def parse_strategies(spec: str) -> list[str]:
    """``zero`` / ``zero,blur`` -> hiding strategies, each checked, no repeats."""
    return parse_names(spec, "strategies", "strategy", FILL_STRATEGIES)
