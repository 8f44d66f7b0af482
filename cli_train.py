"""The classifier training jobs of the command line: this tool's built-in archs (the CIFAR
ResNet-18, the small ViT) from scratch on a built-in dataset, and fine-tuning any classifier on
an image folder. A flag left out takes the job's
recipe (``recipes.py``), the same one a script gets."""
from __future__ import annotations

from argparse import Namespace

import distributed
from commands import note
from recipes import FineTuneConfig, given, train_recipe
from runtime import precision_dtype, precision_label, resolve_device

RECIPE = ("num_epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "save_path")


def _run(args: Namespace) -> dict:
    """What both trainings take from the flags alike; None where a flag was left out."""
    device = resolve_device(args.device)
    note(model=args.arch or args.model or args.weights or "resnet18_cifar",
         random_weights=not args.weights, device=str(device),
         precision=precision_label(precision_dtype(args.precision, device)))
    return {"data_dir": args.data_dir, "log_dir": args.log_dir, "seed": args.seed,
            "save_half": args.save_half, "device": device,
            "dtype": precision_dtype(args.precision, device),
            **{name: getattr(args, name) for name in RECIPE}}


def train_classifier(args: Namespace) -> int:
    """``--mode train [--arch resnet18_cifar|vit_small_cifar]``: train with the arch's recipe,
    keep the best checkpoint, log metrics and curves."""
    from train import fit
    cfg = given(train_recipe(args.arch), dataset=args.dataset, resume=args.resume,
                **_run(args))
    history = fit(cfg)
    if distributed.world().is_main:
        print(f"Best test accuracy: {history.best:.2f}%  (checkpoint {cfg.save_path}, "
              f"metrics {history.metrics})")
    return 0


def fine_tune(args: Namespace) -> int:
    """``--mode train --arch/--weights/--model --data_dir FOLDER``: fine-tune on the folder,
    keep the best checkpoint (with arch, classes, preprocessing), log metrics and curves."""
    from finetune import fine_tune as run_fine_tuning
    from validation import rgb
    cfg = given(FineTuneConfig, arch=args.arch, weights=args.weights, model_spec=args.model,
                classes_file=args.classes, input_size=args.input_size,
                mean=rgb(args.mean, "--mean"), std=rgb(args.std, "--std", positive=True),
                val_fraction=args.val_fraction, **_run(args))
    history = run_fine_tuning(cfg)
    if distributed.world().is_main:
        print(f"Best validation accuracy: {history.best:.2f}% at epoch {history.best_epoch} "
              f"(checkpoint {cfg.save_path}, metrics {history.metrics})")
    return 0
