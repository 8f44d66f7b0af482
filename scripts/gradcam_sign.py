"""Where the detector's Grad-CAM map points before its ReLU: for every explained detection of
the shipped scene detector on the shipped test scenes that matches a garment of its class, the
raw map (``sum_k w_k A_k``, no ReLU) brought to the image, its mean inside the garments' boxes
and on the background, and where its peak lies: the detection's own garment, another garment,
or the background. For the README's reading of why Grad-CAM fails at layer3 and layer4.

    python scripts/gradcam_sign.py [--scenes 300] [--method gradcam] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detection import detector_pass, gradcam_maps, to_tensor
from detectors import load_detector
from detmetrics import best_match
from voc import VOCReader


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=300)
    p.add_argument("--method", default="gradcam")
    p.add_argument("--layers", default="layer2,layer3,layer4")
    p.add_argument("--json", help="also write the table as JSON here (for the results page)")
    args = p.parse_args()
    layers = args.layers.split(",")
    detector = load_detector("checkpoints/fasterrcnn_fashion_scenes.pth", torch.device("cpu"))
    counts = {layer: {"own": 0, "other": 0, "background": 0, "inside": 0.0, "outside": 0.0}
              for layer in layers}
    matched = 0
    with VOCReader("data/fashion_scenes") as reader:
        reader.classes = detector.classes
        for image_id in reader.ids()[:args.scenes]:
            image, truth = reader.image(image_id), reader.annotation(image_id)
            state = detector_pass(detector.model, to_tensor(image, torch.device("cpu")), layers,
                                  detector.score_thresh, 20, detector.label_map)
            raw = gradcam_maps(state, args.method)
            h, w = state.original
            garments = torch.zeros(h, w, dtype=torch.bool)
            for box in truth.boxes.round().long().tolist():
                garments[box[1]:box[3], box[0]:box[2]] = True
            for rank, index in enumerate(state.explained.tolist()):
                c = detector.label_map[int(state.labels[index])]
                candidates = (truth.labels == c).nonzero()[:, 0]
                j, iou = best_match(state.boxes[index].detach(), truth.boxes[candidates])
                if j < 0 or iou < 0.5:
                    continue
                matched += 1
                own = truth.boxes[int(candidates[j])].round().long().tolist()
                for layer, maps in zip(layers, raw):
                    up = F.interpolate(maps[rank:rank + 1, None].detach(),
                                       size=state.padded, mode="bilinear", align_corners=False)
                    up = F.interpolate(up[..., :state.resized[0], :state.resized[1]],
                                       size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                    y, x = divmod(int(up.argmax()), w)
                    where = ("own" if own[0] <= x < own[2] and own[1] <= y < own[3] else
                             "other" if garments[y, x] else "background")
                    tally = counts[layer]
                    tally[where] += 1
                    scale = up.abs().max().clamp(min=1e-12)
                    tally["inside"] += float(up[garments].mean() / scale)
                    tally["outside"] += float(up[~garments].mean() / scale)
    print(f"{args.method}, {matched} matched detections on {args.scenes} scenes; raw map before "
          f"its ReLU, scaled by its largest magnitude")
    print("layer   peak on own garment / another garment / background   mean on garments / "
          "on background")
    n = max(matched, 1)
    table = {layer: {"peak_own_pct": 100 * t["own"] / n, "peak_other_pct": 100 * t["other"] / n,
                     "peak_background_pct": 100 * t["background"] / n,
                     "mean_on_garments": t["inside"] / n, "mean_on_background": t["outside"] / n}
             for layer, t in counts.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"method": args.method, "scenes": args.scenes, "matched": matched,
             "layers": table}, indent=2) + "\n")
    for layer, t in counts.items():
        print(f"{layer:<7} {100 * t['own'] / n:5.1f}% / {100 * t['other'] / n:5.1f}% / "
              f"{100 * t['background'] / n:5.1f}%        {t['inside'] / n:+.3f} / "
              f"{t['outside'] / n:+.3f}")


if __name__ == "__main__":
    main()
