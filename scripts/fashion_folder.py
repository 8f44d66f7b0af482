"""Write Fashion-MNIST test images as an ImageFolder tree with train/ and val/, to fine-tune on.

    python scripts/fashion_folder.py OUT_DIR [--train_per_class 100] [--val_per_class 50]

The images are the first of each class in the test split that ships in ``data/`` (28x28 grey
PNGs, the 2-pixel padding of ``data.py`` removed); class folders are named by class, with
``/`` written as ``_`` (``T-shirt_top``), which the tool matches back to the class name.
Train and val images never overlap.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import load_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--data_dir", default="./data")
    p.add_argument("--train_per_class", type=int, default=100)
    p.add_argument("--val_per_class", type=int, default=50)
    args = p.parse_args()
    split = load_split("fashion_mnist", args.data_dir, train=False)
    counts: dict[int, int] = {}
    want = args.train_per_class + args.val_per_class
    for i, label in enumerate(split.labels.tolist()):
        k = counts.get(label, 0)
        if k >= want:
            continue
        counts[label] = k + 1
        part = "train" if k < args.train_per_class else "val"
        folder = Path(args.out_dir) / part / split.info.classes[label].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(split.images[i, 0, 2:30, 2:30].numpy()).save(folder / f"{i:05d}.png")
    print(f"wrote {sum(counts.values())} images of {len(counts)} classes to {args.out_dir}")


if __name__ == "__main__":
    main()
