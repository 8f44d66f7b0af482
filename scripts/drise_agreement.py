"""How well each gradient method's map of a detection agrees with D-RISE's map of the same
detection, on the shipped scene detector and test scenes: the Spearman rank correlation of the
two maps, and whether their peaks lie within 15 px of each other (the pointing game's
tolerance). D-RISE is black-box, so it is the reference the gradient maps are checked against.

    python scripts/drise_agreement.py [--scenes 20] [--masks 300] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detection import explain_detections, to_tensor
from detectors import load_detector
from drise import explain_detections_drise
from sanity import spearman
from stats import mean_spread, proportion_spread
from voc import VOCReader


def peak(heat: torch.Tensor) -> torch.Tensor:
    y, x = divmod(int(heat.argmax()), heat.shape[1])
    return torch.tensor([y + 0.5, x + 0.5])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--masks", type=int, default=300)
    p.add_argument("--json", help="also write the table as JSON here (for the results page)")
    args = p.parse_args()
    layers = ["layer2", "layer3", "layer4"]
    detector = load_detector("checkpoints/fasterrcnn_fashion_scenes.pth", torch.device("cpu"))
    thresh = detector.score_thresh
    rho: dict[str, list[float]] = {}
    close: dict[str, list[bool]] = {}
    with VOCReader("data/fashion_scenes") as reader:
        reader.classes = detector.classes
        for image_id in reader.ids()[:args.scenes]:
            image = to_tensor(reader.image(image_id), torch.device("cpu"))
            ref = explain_detections_drise(detector.model, image, thresh, 20,
                                           detector.label_map, masks=args.masks)
            for method in ("gradcam", "layercam"):
                res = explain_detections(detector.model, image, layers, thresh, 20,
                                         allowed=detector.label_map, method=method)
                assert torch.equal(res.explained, ref.explained), "other detections explained"
                for layer in layers:
                    key = f"{method} {layer}"
                    for rank in range(len(res.explained)):
                        a, b = res.heatmap(layer, rank), ref.heatmap("input", rank)
                        rho.setdefault(key, []).append(spearman(a, b))
                        close.setdefault(key, []).append(
                            float((peak(a) - peak(b)).norm()) <= 15.0)
    n = len(next(iter(rho.values())))
    print(f"{n} detections on {args.scenes} scenes, D-RISE with {args.masks} masks")
    print("map              Spearman with D-RISE [95% CI]     peaks within 15 px [95% CI]")
    table = {}
    for key, values in rho.items():
        r, c = mean_spread(values), proportion_spread(close[key]).scaled(100)
        print(f"{key:<16} {r.mean:+.2f} {r.interval_text(2)}          "
              f"{c.mean:5.1f}% {c.interval_text(1)}")
        table[key] = {"spearman": r.mean, "spearman_ci95": [r.ci_low, r.ci_high],
                      "peaks_within_15px_pct": c.mean, "peaks_within_15px_ci95": [c.ci_low, c.ci_high]}
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"scenes": args.scenes, "masks": args.masks, "detections": n, "maps": table},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
