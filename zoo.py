"""Models from anywhere: a torchvision classifier, this tool's built-in networks (the CIFAR
ResNet-18, the small ViT), or the user's own factory, each with the preprocessing and class
names it needs.

One function, :func:`load_classifier`, turns ``arch`` / ``weights`` / ``model_spec`` into a
:class:`LoadedModel`; everything downstream (explainers, evaluation, panels) takes that and
never asks where the model came from. torchvision's weights enums carry the preprocessing
(``weights.transforms()``) and the class names (``weights.meta["categories"]``); weights named
by the enum are read from torch's hub cache and downloaded there only when missing. Errors are
one-line ``UserError`` s naming this module's parameters (``arch=``, ``weights=``, ...).
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torchvision
from torch import nn
from torchvision.transforms import InterpolationMode

import hub
import model as cifar
from cam import auto_layer
from data import InputSpec, dataset_info
from errors import ParamError, UserError, note, reason
from tokens import return_logits

CIFAR_ARCH = cifar.ARCH                      # "resnet18_cifar", the default
BUILTIN_ARCHS = tuple(cifar.BUILDERS)        # trained here on a built-in dataset
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224                     # torchvision's resize-then-crop convention


@dataclass(frozen=True)
class LoadedModel:
    """A classifier ready to explain: ``module`` in eval mode on its device, its inputs and class
    names (one :class:`data.InputSpec`), the layer explained by default (None: no layer has a
    map), a line describing it all, and the built-in dataset of a built-in arch."""

    module: nn.Module
    inputs: InputSpec
    arch: str
    default_layer: str | None
    description: str
    dataset: str | None = None     # the built-in dataset whose test split it is tested on

    @property
    def layer_reason(self) -> str:
        """Why ``auto`` is the default layer, in a few words."""
        if self.arch == CIFAR_ARCH:
            return "the CIFAR ResNet-18's last stage, before global average pooling"
        return "the last layer with a spatial map whose patches reach the logits"

    def layer(self, name: str = "auto") -> str:
        """``name``, with ``auto`` resolved to the default layer (one line when there is none)."""
        if name != "auto":
            return name
        if self.default_layer is None:
            auto_layer(self.module, self.input_size)      # raises the one-line reason
        return self.default_layer

    @property
    def input_size(self) -> int:
        """The side of the square input the model is run at."""
        return self.inputs.input_size

    @property
    def classes(self) -> tuple[str, ...]:
        """The names of the model's outputs, in order."""
        return self.inputs.classes

    def as_meta(self) -> dict[str, Any]:
        """What a checkpoint of this model records besides its weights."""
        return {"arch": self.arch, **self.inputs.as_meta()}

    def class_index(self, target: str | int) -> int:
        """A class given by name or index -> its index; a one-line error when there is none."""
        if isinstance(target, str) and target in self.classes:
            return self.classes.index(target)
        if isinstance(target, int) or target.strip().isdigit():
            index = int(target)
            if 0 <= index < len(self.classes):
                return index
            raise ParamError("target", f"{{param}} {target}: the model has classes 0..{len(self.classes) - 1}")
        folded = {c.lower(): i for i, c in enumerate(self.classes)}
        if target.lower() in folded:
            return folded[target.lower()]
        close = difflib.get_close_matches(target, self.classes, n=4, cutoff=0.6)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ParamError("target", f"{{param}} {target!r} is not one of the model's {len(self.classes)} "
                        f"classes{hint}")


# --------------------------------------------------------------------------------------------
# Names


@functools.lru_cache(maxsize=1)
def torchvision_archs() -> tuple[str, ...]:
    """Every classification model in torchvision (``list_models(module=torchvision.models)``)."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def known_archs() -> tuple[str, ...]:
    """Every ``arch`` this module builds: the built-in ones first (the CIFAR ResNet-18, the
    small ViT), then torchvision's."""
    return (*BUILTIN_ARCHS, *torchvision_archs())


def _unknown_arch(arch: str) -> UserError:
    close = difflib.get_close_matches(arch, known_archs(), n=5, cutoff=0.5)
    hint = (f"close names: {', '.join(close)}" if close
            else f"e.g. {CIFAR_ARCH}, resnet50, convnext_tiny; {len(known_archs())} in all")
    return ParamError("arch", f"unknown {{param}} {arch!r} ({hint})")


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """ImageNet's 1,000 class names, as they ship inside torchvision."""
    return tuple(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def read_classes(path: str | os.PathLike) -> tuple[str, ...]:
    """A classes file: one name per line, blank lines skipped."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamError("classes_file", f"{{param}} {path}: cannot read it ({reason(exc)})") from None
    names = [n for n in names if n]
    if not names:
        raise ParamError("classes_file", f"{{param}} {path} names no class (one name per line)")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ParamError("classes_file", f"{{param}} {path} names '{twice}' twice")
    return tuple(names)


# --------------------------------------------------------------------------------------------
# torchvision weights


def _weights_enum(arch: str, name: str) -> torchvision.models.WeightsEnum | None:
    """The weights enum member called ``name`` for ``arch`` (``DEFAULT``, ``IMAGENET1K_V2`` or
    ``ResNet50_Weights.IMAGENET1K_V2``), None when ``name`` is no such member."""
    enum = torchvision.models.get_model_weights(arch)
    member = name.split(".", 1)[1] if name.startswith(enum.__name__ + ".") else name
    for key in (member, member.upper()):
        if key in enum.__members__:
            return enum[key]
    return None


def hub_weights_file(weights: torchvision.models.WeightsEnum) -> Path:
    """The weights' file in torch's hub cache, downloaded there when missing
    (:func:`hub.hub_weights_file`, the one reader for classifiers and detectors)."""
    return hub.hub_weights_file(weights, f"weights {weights}")


def _interpolation(transform: Any) -> str:
    mode = getattr(transform, "interpolation", InterpolationMode.BILINEAR)
    return mode.value if isinstance(mode, InterpolationMode) else str(mode)


def inputs_of(weights: torchvision.models.WeightsEnum, arch: str) -> InputSpec:
    """The inputs that ``weights.transforms()`` makes and the classes of ``weights.meta``."""
    transform = weights.transforms()
    crop = getattr(transform, "crop_size", [224])
    resize = getattr(transform, "resize_size", None)
    return InputSpec(name=arch, classes=tuple(weights.meta.get("categories") or ()),
                     input_size=int(crop[0]), resize_size=int(resize[0]) if resize else None,
                     mean=tuple(float(v) for v in transform.mean),
                     std=tuple(float(v) for v in transform.std),
                     interpolation=_interpolation(transform))


# Keywords for building a random-weight model that runs as it would with trained weights:
# GoogLeNet and Inception v3 without the auxiliary heads (used only in training), initialised
# explicitly (torchvision warns otherwise).
_RANDOM_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


def _build_torchvision(arch: str, num_classes: int) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes,
                                            **_RANDOM_KWARGS.get(arch, {}))


def _build_with_hub_weights(arch: str, enum: torchvision.models.WeightsEnum, path: Path,
                            weights: str) -> nn.Module:
    """``arch`` built as torchvision builds it for ``enum`` (its own keywords: Inception's
    input transform, ViT's image size), with the state dict read from the hub cache's ``path``
    by :func:`model.read_checkpoint` (``weights_only=True``): torchvision's own loader, which
    unpickles the cached file, never sees it, so a file planted in the cache runs no code."""
    try:
        state = cifar.read_checkpoint(path)["model_state_dict"]
        cifar.check_finite(state, f"weights {enum} ({path})")
    except UserError as exc:
        raise ParamError("weights", f"{{param}} {weights}: {path} is not the file of {enum} "
                                    f"({reason(exc, 100)}); delete it to download it again"
                         ) from None

    def safely_read(self: Any, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return state

    with warnings.catch_warnings(), mock.patch.object(type(enum), "get_state_dict", safely_read):
        warnings.simplefilter("ignore", UserWarning)
        try:
            return torchvision.models.get_model(arch, weights=enum)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ParamError("weights", f"{{param}} {weights}: {path} is not the file of {enum} "
                                        f"({reason(exc, 100)}); delete it to download it again"
                             ) from None


def _classifier_outputs(state: dict[str, torch.Tensor]) -> tuple[str, int] | None:
    """The name of the last 2-D (or more) weight of a state dict and its first size: the
    classifier's weight and class count for every torchvision classifier (a state dict keeps
    the order in which the model defines its modules)."""
    for key, value in reversed(list(state.items())):
        if key.endswith("weight") and value.ndim >= 2:
            return key, int(value.shape[0])
    return None


def replace_head(module: nn.Module, num_classes: int, input_size: int) -> str:
    """Swap the layer that makes the logits (the last ``Linear`` or ``Conv2d`` with weights:
    ``fc``, ``classifier.6``, ``heads.head``, SqueezeNet's ``classifier.1``) for a freshly
    initialised one with ``num_classes`` outputs, in place; its name. One line when the model
    has no such layer, or does not give ``num_classes`` logits afterwards."""
    last = _classifier_outputs(module.state_dict())
    name = last[0].rsplit(".", 1)[0] if last else ""
    old = module.get_submodule(name) if name else None
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                        bias=old.bias is not None)
    else:
        raise UserError(f"the model's last layer with weights ({name or 'none'}) is no Linear or "
                        f"Conv2d layer; it cannot be given {num_classes} classes")
    parent, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, child,
            new.to(old.weight.device, old.weight.dtype))
    outputs = _output_count(module, input_size, f"the model with a new {name}")
    if outputs != num_classes:
        raise UserError(f"replacing {name} gave {outputs} outputs, not {num_classes} classes; "
                        f"the model's logits come from elsewhere")
    return name


# --------------------------------------------------------------------------------------------
# Weight files


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], what: str, arch: str
                   ) -> None:
    """Load ``state`` into ``model`` exactly, or raise one line naming what does not fit
    (:func:`model.load_state`)."""
    cifar.load_state(model, state, what, f"arch {arch}")


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as ``model.state_dict()`` names them: without the ``module.`` of DataParallel /
    DDP and the ``_orig_mod.`` of ``torch.compile``."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _read_weights_file(path: str | os.PathLike, arch: str | None = None) -> dict[str, Any]:
    """A weights file as a checkpoint dict (``model_state_dict`` plus whatever it records)."""
    if not Path(path).is_file() and arch in torchvision_archs():
        members = ", ".join(torchvision.models.get_model_weights(arch).__members__)
        raise ParamError("weights", f"{{param}} {path} is neither a file nor a torchvision weights "
                        f"name of {{arch}} {arch} ({members})", "arch")
    try:
        ckpt = cifar.read_checkpoint(path)
    except UserError as exc:   # a missing file, a folder, a FIFO, a broken checkpoint
        raise ParamError("weights", f"{{param}} {path}: {exc}") from None
    ckpt["model_state_dict"] = _strip_prefix(ckpt["model_state_dict"])
    return ckpt


def _inputs_from_meta(meta: dict[str, Any], base: InputSpec) -> InputSpec:
    """``base`` with what a checkpoint recorded."""
    size = int(meta.get("input_size") or base.input_size)
    resize = meta.get("resize_size", base.resize_size if size == base.input_size else "auto")
    if resize == "auto":
        resize = None if base.resize_size is None else round(size * RESIZE_RATIO)
    return replace(base, input_size=size, resize_size=None if resize is None else int(resize),
                   mean=tuple(meta.get("mean") or base.mean),
                   std=tuple(meta.get("std") or base.std),
                   interpolation=str(meta.get("interpolation") or base.interpolation))


# --------------------------------------------------------------------------------------------
# User factories


def load_factory(spec: str) -> nn.Module:
    """``FILE.py:FUNCTION`` -> the module that ``FUNCTION()`` returns. The file's code runs.

    The file is imported under a private name, with its folder on ``sys.path`` while it loads
    (so it can import its neighbours). Anything it raises, or a return value that is not an
    ``nn.Module``, is one line naming the spec.
    """
    file, sep, function = spec.rpartition(":")
    if not sep or not file or not function:
        raise ParamError("model_spec", f"{{param}} {spec!r}: expected FILE.py:FUNCTION")
    path = Path(file)
    if not path.is_file():
        raise ParamError("model_spec", f"{{param}} {spec}: no file {path}")
    name = f"_user_model_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ParamError("model_spec", f"{{param}} {spec}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
        factory = getattr(module, function, None)
        if not callable(factory):
            raise ParamError("model_spec", f"{{param}} {spec}: {path} defines no function {function}")
        built = factory()
    except UserError:
        raise
    except SystemExit as exc:   # sys.exit() in the factory or at import: no model, no exit
        raise ParamError("model_spec", f"{{param}} {spec} called sys.exit({exc.code!r}) instead "
                                       f"of returning a model") from None
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        raise ParamError("model_spec", f"{{param}} {spec} raised {type(exc).__name__}: {reason(exc, 100)}"
                        ) from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    if not isinstance(built, nn.Module):
        raise ParamError("model_spec", f"{{param}} {spec} returned a {type(built).__name__}, not a torch.nn.Module")
    if isinstance(built, torch.jit.ScriptModule):
        raise ParamError("model_spec", f"{{param}} {spec} returned a TorchScript module, whose layers "
                                       f"take no hooks; return the Python nn.Module it was "
                                       f"scripted from")
    return _usable(built, spec)


def _usable(module: nn.Module, spec: str) -> nn.Module:
    """A factory's model as the explainers can run it: every weight materialised and finite
    (a NaN weight gives NaN probabilities and maps, never an error), floating weights in
    float32 (a ``.half()`` or ``.double()`` model is converted, with a note: inputs are
    float32, and reduced precision is the ``dtype`` option's business)."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    for key, value in tensors:
        if value.is_meta:
            raise ParamError("model_spec", f"{{param}} {spec}: weight '{key}' is a meta tensor (a "
                                           f"shape without values); build the model on a device")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ParamError("model_spec", f"{{param}} {spec}: weight '{key}' is not finite (NaN "
                                           f"or inf), so every probability and map would be NaN")
    odd = sorted({str(v.dtype).replace("torch.", "") for _, v in tensors
                  if v.is_floating_point() and v.dtype != torch.float32})
    if odd:
        note(f"model_spec {spec} holds {', '.join(odd)} weights; they are converted to float32")
        module.float()
    return module


@torch.no_grad()
def _output_count(module: nn.Module, size: int, what: str) -> int:
    """The number of logits ``module`` gives for one input of ``size``, or a one-line error
    when it does not run or gives no ``[1, C]`` tensor."""
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    was_training = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        out = module(torch.zeros(1, 3, size, size, dtype=dtype, device=device))
    except Exception as exc:  # noqa: BLE001 - a model that cannot take this input
        raise UserError(f"{what} fails on a {size}x{size} input ({type(exc).__name__}: "
                        f"{reason(exc, 100)}); give its input_size") from None
    finally:
        for m, training in was_training:
            m.training = training
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{what} returns {shape} for one image, not logits [1, classes]")
    return int(out.shape[1])


# --------------------------------------------------------------------------------------------
# The one entry point


def load_classifier(arch: str | None = None, weights: str | None = None,
                    model_spec: str | None = None, input_size: int | None = None,
                    mean: tuple[float, float, float] | None = None,
                    std: tuple[float, float, float] | None = None,
                    classes_file: str | os.PathLike | None = None,
                    device: torch.device | str = "cpu", dataset: str | None = None,
                    builtin_only: bool = False) -> LoadedModel:
    """The classifier to explain, with its preprocessing and class names.

    - ``model_spec`` ``FILE.py:FUNCTION``: the user's factory (its code runs); ``weights`` may
      then be a state-dict file for it. Input size 224, ImageNet statistics and, for 1,000
      outputs, ImageNet's class names, unless ``input_size`` / ``mean`` / ``std`` /
      ``classes_file`` say otherwise.
    - ``arch`` ``resnet18_cifar`` (the default; also when ``weights`` is a checkpoint of it):
      this tool's CIFAR ResNet-18, random or from a checkpoint file, explained at ``layer4``;
      ``vit_small_cifar`` likewise, this tool's small ViT, explained at ``auto`` (its last
      block's first norm).
    - ``arch`` any torchvision classifier; ``weights`` None (random, for tests), a weights name
      (``DEFAULT``, ``IMAGENET1K_V2``; from the hub cache, downloaded when missing) or a file
      (a state dict, or a checkpoint this tool wrote, whose recorded fields are used).

    ``arch`` None means the checkpoint's own arch, else ``resnet18_cifar``; ``builtin_only``
    refuses a checkpoint of any other arch than the built-in ones (``BUILTIN_ARCHS``). The
    default target layer is ``auto`` (:func:`cam.auto_layer`) except for ``resnet18_cifar``.
    ``dataset`` names the built-in dataset of a built-in arch's checkpoint that does not record
    its own (it must agree with one that does); other models have none.
    """
    device = torch.device(device)
    classes = read_classes(classes_file) if classes_file is not None else None
    if dataset is not None and (model_spec is not None or arch not in (None, *BUILTIN_ARCHS)):
        raise ParamError("dataset", f"{{param}} {dataset}: only {{arch}} {' or '.join(BUILTIN_ARCHS)} "
                        f"train on a built-in dataset; other models are tested on an image "
                        f"folder", "arch")
    if model_spec is not None:
        return _load_factory_model(model_spec, weights, input_size, mean, std, classes, device)
    if arch is not None and arch not in known_archs():
        raise _unknown_arch(arch)
    ckpt = None
    if weights is not None and (arch in (None, *BUILTIN_ARCHS)
                                or _weights_enum(arch, weights) is None):
        ckpt = _read_weights_file(weights, arch)
        recorded = ckpt.get("arch")
        if builtin_only and (arch or recorded or CIFAR_ARCH) not in BUILTIN_ARCHS:
            raise ParamError("weights", f"{{param}} {weights} is a checkpoint of {{arch}} "
                                        f"{arch or recorded}, not {' or '.join(BUILTIN_ARCHS)}",
                             "arch")
        if arch is None:
            arch = recorded or CIFAR_ARCH
            if arch not in known_archs():
                raise ParamError("weights", f"{{param}} {weights} is a checkpoint of {{arch}} {arch}, which this "
                                f"tool does not build; give {{model_spec}} FILE.py:FUNCTION",
                                 "arch", "model_spec")
        elif recorded is not None and recorded != arch:
            raise ParamError("weights", f"{{param}} {weights} is a checkpoint of {{arch}} {recorded}, not {arch}",
                             "arch")
    arch = arch or CIFAR_ARCH
    if arch in BUILTIN_ARCHS:
        loaded = _load_builtin(arch, weights, ckpt, classes, input_size, mean, std, dataset)
    else:
        loaded = _load_torchvision(arch, weights, ckpt, classes, input_size, mean, std)
    loaded.module.to(device).eval()
    return loaded


def _default_layer(module: nn.Module, size: int, what: str) -> str | None:
    """The ``auto`` layer for inputs of ``size`` (None when the model has none); a model that
    cannot run at that size (ViT's fixed grid, Inception's kernels larger than its late maps)
    is one line naming ``input_size``."""
    try:
        return auto_layer(module, size)
    except UserError:
        return None
    except Exception as exc:  # noqa: BLE001 - torchvision asserts, kernels larger than the map
        raise ParamError("input_size", f"{{param}} {size}: {what} fails on a {size}x{size} input "
                                       f"({type(exc).__name__}: {reason(exc, 100)})") from None


def _override(inputs: InputSpec, input_size: int | None,
              mean: tuple[float, float, float] | None,
              std: tuple[float, float, float] | None, classes: tuple[str, ...]) -> InputSpec:
    """``inputs`` with the model's ``classes`` and what the caller says explicitly (a new size
    keeps the resize ratio)."""
    size = input_size or inputs.input_size
    resize = inputs.resize_size
    if input_size is not None and input_size != inputs.input_size and resize is not None:
        resize = round(input_size * resize / inputs.input_size)
    return replace(inputs, classes=tuple(classes), input_size=size, resize_size=resize,
                   mean=tuple(mean or inputs.mean), std=tuple(std or inputs.std))


def _check_classes(classes: tuple[str, ...] | None, outputs: int, what: str
                   ) -> tuple[str, ...] | None:
    if classes is not None and len(classes) != outputs:
        raise ParamError("classes_file", f"{{param}} names {len(classes)} classes but {what} has {outputs} "
                        f"outputs")
    return classes


def _load_builtin(arch: str, weights: str | None, ckpt: dict[str, Any] | None,
                  classes: tuple[str, ...] | None, input_size: int | None,
                  mean: tuple[float, float, float] | None,
                  std: tuple[float, float, float] | None, dataset: str | None) -> LoadedModel:
    """A built-in arch (``model.BUILDERS``), random or from its checkpoint, with its dataset's
    inputs; explained at ``layer4`` (the CIFAR ResNet-18) or at ``auto``."""
    recorded = (ckpt or {}).get("dataset")
    if dataset is not None and recorded is not None and dataset != recorded:
        raise ParamError("dataset", f"{{param}} {dataset}: the checkpoint {weights} was trained on {recorded}; "
                        f"leave it out to use its own")
    info = dataset_info(recorded or dataset or "cifar10")
    if ckpt is None:
        if weights is not None:
            raise ParamError("weights", f"{{param}} {weights}: {{arch}} {arch} has no named weights; "
                            f"give a checkpoint file", "arch")
        module, meta, source = cifar.build(arch, len(classes or info.classes)), {}, "random"
    else:
        state = ckpt["model_state_dict"]
        head = _classifier_outputs(state)      # fc (the ResNet), heads.head (the ViT)
        outputs = head[1] if head is not None else len(info.classes)
        cifar.check_metadata(ckpt, weights, outputs)
        module = cifar.build(arch, outputs)
        fit_state_dict(module, state, f"weights {weights}", arch)
        meta = {k: v for k, v in ckpt.items() if k not in ("model_state_dict",
                                                           "optimizer_state_dict")}
        source = str(weights)
    outputs = _classifier_outputs(module.state_dict())[1]
    names = (_check_classes(classes, outputs, f"the checkpoint {weights}")
             or tuple(meta.get("classes") or ()) or
             (info.classes if len(info.classes) == outputs
              else tuple(f"class {i}" for i in range(outputs))))
    inputs = _override(_inputs_from_meta(meta, info), input_size, mean, std, names)
    if arch == CIFAR_ARCH:
        layer, where = "layer4", ""
    else:
        layer = _default_layer(module, inputs.input_size, arch)
        where = f", layer {layer}"
    return LoadedModel(module, inputs, arch, layer,
                       f"{arch} ({source}), {len(names)} classes, {inputs.input_size} px{where}",
                       info.name)


def _load_torchvision(arch: str, weights: str | None, ckpt: dict[str, Any] | None,
                      classes: tuple[str, ...] | None, input_size: int | None,
                      mean: tuple[float, float, float] | None,
                      std: tuple[float, float, float] | None) -> LoadedModel:
    default = torchvision.models.get_model_weights(arch).DEFAULT
    base = inputs_of(default, arch)
    if weights is not None and ckpt is None:
        enum = _weights_enum(arch, weights)
        path = hub_weights_file(enum)
        categories = tuple(enum.meta["categories"])
        _check_classes(classes, len(categories), f"{arch} with {enum}")
        module = _build_with_hub_weights(arch, enum, path, weights)
        names = classes or categories
        prep = _override(inputs_of(enum, arch), input_size, mean, std, names)
        source = f"{enum}, {path}"
    else:
        meta = ckpt or {}
        state = {k: v for k, v in meta.get("model_state_dict", {}).items()
                 if not k.startswith(_AUX_PREFIXES)}
        last = _classifier_outputs(state)
        outputs = (len(meta["classes"]) if meta.get("classes")
                   else len(classes) if classes is not None
                   else last[1] if last is not None else 1000)
        module = _build_torchvision(arch, outputs)
        if state:
            fit_state_dict(module, state, f"weights {weights}", arch)
        names = (_check_classes(classes, outputs, arch) or tuple(meta.get("classes") or ())
                 or (imagenet_classes() if outputs == 1000
                     else tuple(f"class {i}" for i in range(outputs))))
        prep = _override(_inputs_from_meta(meta, base), input_size, mean, std, names)
        source = str(weights) if weights is not None else "random weights"
    layer = _default_layer(module, prep.input_size, arch)
    return LoadedModel(module, prep, arch, layer,
                       f"{arch} ({source}), {len(names)} classes, {prep.input_size} px, "
                       f"layer {layer}")


def _load_factory_model(spec: str, weights: str | None, input_size: int | None,
                        mean: tuple[float, float, float] | None,
                        std: tuple[float, float, float] | None,
                        classes: tuple[str, ...] | None, device: torch.device) -> LoadedModel:
    module = return_logits(load_factory(spec))     # a Hugging Face model's output.logits
    meta: dict[str, Any] = {}
    if weights is not None:
        meta = _read_weights_file(weights)
        state = meta["model_state_dict"]
        recorded = meta.get("classes")
        if recorded and _classifier_outputs(module.state_dict()) != _classifier_outputs(state):
            # a checkpoint fine-tuned here from this factory: the factory's head, new classes
            replace_head(module, len(recorded), int(meta.get("input_size") or input_size or 224))
        fit_state_dict(module, state, f"weights {weights}", spec)
        _usable(module, spec)
    module.to(device).eval()
    base = InputSpec(name=spec, classes=(), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     input_size=224, resize_size=round(224 * RESIZE_RATIO))
    prep = _inputs_from_meta(meta, base)
    prep = _override(prep, input_size, mean, std, prep.classes)
    outputs = _output_count(module, prep.input_size, f"model_spec {spec}")
    names = (_check_classes(classes, outputs, f"model_spec {spec}") or tuple(meta.get("classes") or ())
             or (imagenet_classes() if outputs == 1000
                 else tuple(f"class {i}" for i in range(outputs))))
    if len(names) != outputs:
        raise ParamError("weights", f"{{param}} {weights} lists {len(names)} classes but {{model_spec}} {spec} has "
                        f"{outputs} outputs", "model_spec")
    prep = replace(prep, classes=tuple(names))
    layer = _default_layer(module, prep.input_size, spec)
    return LoadedModel(module, prep, spec, layer,
                       f"{spec}{f' ({weights})' if weights else ''}, {len(names)} classes, "
                       f"{prep.input_size} px, layer {layer}")
