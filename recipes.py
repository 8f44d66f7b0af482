"""The recipes: what each kind of training and explaining runs when nothing says otherwise.

These dataclasses are the one home of the defaults. The library's functions take them
(``train.fit``, ``finetune.fine_tune``, ``train_detector.fit_detector``) and the command line
reads its defaults from them, so ``--help`` shows the recipe that runs and a script runs the
same recipe as the command line. Where a default differs by job (the CIFAR recipe, fine-tuning,
the detector), each job's config says so. No torch here: ``--help`` imports this module.

``device`` is a ``torch.device`` or its name; ``dtype`` the autocast precision (None: fp32).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

# The classifier that ships, tested when no checkpoint is named and none was trained here.
SHIPPED_CLASSIFIER = "checkpoints/resnet18_fashion_mnist.pth"


@dataclass(frozen=True)
class TrainingRun:
    """What every training run takes: where its data, checkpoint and logs are, the recipe's
    common numbers, the seed, the device and the precision."""

    data_dir: str = "./data"
    save_path: str = "./checkpoints/resnet_best.pth"
    log_dir: str = "./logs"
    num_epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    seed: int = 0
    save_half: bool = False
    device: Any = "cpu"
    dtype: Any = None


@dataclass(frozen=True)
class TrainConfig(TrainingRun):
    """:func:`train.fit`: this tool's CIFAR ResNet-18 on a built-in dataset, one-cycle SGD.

    ``arch``: the built-in network trained from scratch (``model.BUILDERS``). ``optimizer``:
    ``sgd`` is SGD with Nesterov momentum 0.9 and a one-cycle learning rate peaking at ``lr``
    (a quarter of the steps rising from ``lr / 10``); ``adamw`` is AdamW (betas 0.9, 0.999;
    no weight decay on biases, norms, the position embedding and the class token) with a linear
    warm-up over ``warmup`` of the steps, then a cosine down to zero."""

    arch: str = "resnet18_cifar"
    dataset: str = "cifar10"
    label_smoothing: float = 0.1
    optimizer: str = "sgd"
    warmup: float = 0.05        # adamw's warm-up, a share of all steps (sgd's: one-cycle's own)
    resume: bool = False        # continue the run whose training state is beside save_path


@dataclass(frozen=True)
class ViTTrainConfig(TrainConfig):
    """:func:`train.fit`: the small vision transformer (``vit_small_cifar``) from scratch on a
    built-in dataset, with AdamW and a warm-up + cosine learning rate (vision transformers
    trained from scratch are commonly reported to converge markedly worse with SGD)."""

    arch: str = "vit_small_cifar"
    save_path: str = "./checkpoints/vit_best.pth"
    num_epochs: int = 20        # the shipped ViT's: 90.50% on Fashion-MNIST
    batch_size: int = 128
    lr: float = 1e-3            # for batch 128
    weight_decay: float = 0.05
    optimizer: str = "adamw"


# The recipe of each built-in arch, by name: what ``--mode train --arch NAME`` runs.
TRAIN_RECIPES: dict[str, type[TrainConfig]] = {
    TrainConfig.arch: TrainConfig,
    ViTTrainConfig.arch: ViTTrainConfig,
}


def train_recipe(arch: str | None) -> type[TrainConfig]:
    """The recipe that trains built-in ``arch`` (None: the CIFAR ResNet-18's)."""
    return TRAIN_RECIPES[arch or TrainConfig.arch]


@dataclass(frozen=True)
class FineTuneConfig(TrainingRun):
    """:func:`finetune.fine_tune`: a pretrained network on an image folder, warm-up + cosine.
    ``arch`` / ``weights`` / ``model_spec`` name the starting network as
    :func:`zoo.load_classifier` takes them."""

    save_path: str = "./checkpoints/finetuned.pth"
    num_epochs: int = 10
    batch_size: int = 32
    lr: float = 0.01            # for a pretrained network at batch 32
    weight_decay: float = 1e-4
    arch: str | None = None
    weights: str | None = None
    model_spec: str | None = None
    classes_file: str | None = None
    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    label_smoothing: float = 0.1
    val_fraction: float | None = None   # None: 0.1 held out, where there is no val/ folder
    workers: int | None = None  # None: folders.loader_workers(device)


@dataclass(frozen=True)
class DetectorTrainConfig(TrainingRun):
    """:func:`train_detector.fit_detector`: the Fashion-MNIST scene detector. ``test_scenes``:
    test scenes scored after each epoch (at most 300); ``init_weights``: a scene-detector
    checkpoint to start a new schedule from; ``resume``: continue the run that wrote
    ``save_path``'s training state."""

    save_path: str = "./checkpoints/scene_detector.pth"
    num_epochs: int = 6
    batch_size: int = 8
    lr: float = 0.02
    weight_decay: float = 1e-4
    # new Fashion-MNIST train-split scenes every epoch; test scenes scored after each
    scenes_per_epoch: int = 4000
    test_scenes: int = 300
    resume: bool = False
    init_weights: str | None = None


@dataclass(frozen=True)
class ExplainConfig:
    """The classifier explanation jobs: images per chunk of explanation, how many test images
    the heatmap and sanity jobs explain (your own photos: all of them), and the file format of
    each image's panel (``PANEL_FORMATS``: png is lossless; jpg, at JPEG quality 95, is a few
    times smaller and much faster to write, for folders of thousands of photos)."""

    batch_size: int = 128
    num_images: int = 20
    panel_format: str = "png"


PANEL_FORMATS = ("png", "jpg")


def default(config: type, name: str) -> Any:
    """The default of field ``name`` of a config class."""
    return next(f.default for f in fields(config) if f.name == name)


def given(config: type, **values: Any) -> Any:
    """``config`` built from the values that are not None: a None means "the recipe's
    default", as a flag left out does."""
    return config(**{k: v for k, v in values.items() if v is not None})
