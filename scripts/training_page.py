"""Write a shipped model's training report (Markdown) from its run's own files: the
``metrics.csv`` that training writes, its ``training_curves.png``, and the checkpoint's
recorded metadata. No number in the page is typed by hand.

    python scripts/training_page.py LOG_DIR CHECKPOINT OUT.md --title TITLE --command "..."
        [--wall SECONDS]

The machine line is this machine's (the CPU's model name as ``lscpu`` gives it, cores,
torch), so run it where the training ran; ``--wall`` is the run's wall time when it was measured from outside (``time``).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def read_rows(log_dir: Path) -> list[dict[str, float]]:
    with open(log_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def page(rows: list[dict[str, float]], meta: dict, size_mb: float, title: str, command: str,
         curves: str, wall: float | None, torch_version: str, shared: str | None = None) -> str:
    best = max(rows, key=lambda r: r["test_acc"])
    seconds = sum(r["seconds"] for r in rows)
    lines = [
        f"# {title}",
        "",
        (f"**Test accuracy: {best['test_acc']:.2f}%** on the {meta['dataset']} test split "
         f"(epoch {int(best['epoch'])} of {len(rows)}, the checkpoint kept: it records "
         f"{meta['recorded']:.2f}%), `{meta['path']}` ({size_mb:.1f} MB, fp16 weights)."),
        "",
        "```bash",
        command,
        "```",
        "",
        f"Machine: {meta['cpu']}, {os.cpu_count()} cores, torch {torch_version}, precision "
        f"{meta['precision']}; trained {meta['date']}, "
        + (f"not alone on the machine: {shared}" if shared else "nothing else running")
        + f". Training and scoring took {seconds / 60:.1f} min over the epochs"
        + (f" ({wall / 60:.1f} min wall time with start-up and data loading)." if wall else "."),
        "",
        "| epoch | train loss | train accuracy | test loss | test accuracy | lr at start | s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {int(r['epoch'])} | {r['train_loss']:.4f} | {r['train_acc']:.2f}% | "
                     f"{r['test_loss']:.4f} | {r['test_acc']:.2f}% | {r['lr']:.2e} | "
                     f"{r['seconds']:.0f} |")
    lines += ["", f"![Training curves]({curves})", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log_dir", type=Path)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--title", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--wall", type=float, default=None)
    p.add_argument("--date", default=datetime.date.today().isoformat())
    p.add_argument("--shared", default=None,
                   help="what else ran during the training, where something did (the seconds "
                        "of those epochs are then not the model's alone)")
    args = p.parse_args()
    import torch

    from model import read_checkpoint
    from runtime import cpu_has_native_bf16, cpu_name
    rows = read_rows(args.log_dir)
    ckpt = read_checkpoint(args.checkpoint)
    curves = args.out.with_name(args.out.stem + "_curves.png")
    shutil.copyfile(args.log_dir / "training_curves.png", curves)
    meta = {"cpu": cpu_name(), "dataset": ckpt.get("dataset", "?"), "recorded": float(ckpt.get("acc", "nan")),
            "path": args.checkpoint.resolve().relative_to(ROOT)
            if args.checkpoint.resolve().is_relative_to(ROOT) else args.checkpoint,
            "date": args.date,
            "precision": "bf16 autocast" if cpu_has_native_bf16() else "fp32"}
    text = page(rows, meta, args.checkpoint.stat().st_size / 1e6, args.title, args.command,
                curves.name, args.wall, torch.__version__.split("+")[0], args.shared)
    args.out.write_text(text)
    print(f"wrote {args.out} and {curves}")


if __name__ == "__main__":
    main()
