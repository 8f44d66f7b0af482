"""The miss analysis: which objects count as missed, and each miss's kind follows from its best
proposal's IoU and score, on a detector with random weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import random_image
from torchvision.ops import box_iou, clip_boxes_to_image

import misses
from detection import DetectionResult, explain_detections, second_stage
from drise import DriseSettings


def test_an_object_counts_as_missed_without_a_confident_detection_of_its_class() -> None:
    result = DetectionResult(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]),
                             torch.tensor([1, 2, 1]), torch.tensor([0.9, 0.9, 0.3]),
                             torch.arange(3), {})
    truth = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [0, 0, 11, 10]])
    labels = torch.tensor([1, 1, 1, 1])
    # found; covered but by another class; only an unconfident detection; found (IoU 0.91)
    assert misses.missed_objects(result, truth, labels, 0.5) == [1, 2]


def test_every_miss_is_classified_by_its_best_proposal(detector) -> None:
    image = random_image(64, 90, seed=2)
    result = explain_detections(detector, image, ("layer4",), 0.0, 5)
    truth = torch.tensor([[5.0, 5, 40, 40], [50, 10, 88, 60], [2, 2, 6, 6]])
    labels = torch.tensor([1, 3, 5])
    thresh = 0.6
    flags = [(m, m.training) for m in detector.modules()]
    found = misses.explain_misses(detector, image, result, truth, labels, thresh, ("layer3",))
    assert all(m.training == f for m, f in flags)
    assert not any(m._forward_hooks for m in detector.modules())
    assert [m.truth_index for m in found] == misses.missed_objects(result, truth, labels, thresh)
    # the literal: every proposal's box for the object's class, in original pixels
    with torch.no_grad():
        batch, _ = detector.transform([image])
        size = batch.image_sizes[0]
        feats = detector.backbone(batch.tensors)
        (props,), _ = detector.rpn(batch, feats)
        logits, regression = second_stage(detector.roi_heads, feats, [props], [size])
        decoded = clip_boxes_to_image(detector.roi_heads.box_coder.decode(regression, [props]),
                                      size)
        probs = F.softmax(logits, -1)
    to_resized = torch.tensor([size[1] / 90, size[0] / 64] * 2)
    for miss in found:
        iou = box_iou((miss.box * to_resized)[None], decoded[:, miss.label])[0]
        r = int(iou.argmax())
        assert abs(miss.iou - float(iou[r])) < 1e-5
        assert abs(miss.score - float(probs[r, miss.label])) < 1e-5
        expected = ("localisation" if miss.iou < 0.5 else
                    "classification" if miss.score < thresh else "suppressed")
        assert miss.kind == expected
        assert miss.winner == int(probs[r].argmax())
        heat = miss.maps["layer3"]
        assert heat.shape == (64, 90) and heat.min() >= 0 and heat.max() <= 1


def test_drise_explains_a_miss_with_its_ground_truth_box(detector) -> None:
    image = random_image(64, 90, seed=2)
    result = explain_detections(detector, image, ("layer4",), 0.0, 5)
    found = misses.explain_misses(detector, image, result, torch.tensor([[2.0, 2, 6, 6]]),
                                  torch.tensor([5]), 0.99, method="drise",
                                  drise=DriseSettings(masks=4, grid=4, batch_size=4))
    assert len(found) == 1 and list(found[0].maps) == ["input"]
    assert found[0].maps["input"].shape == (64, 90)


def test_miss_rows_summary_and_table() -> None:
    names = {1: "Shirt", 2: "Pullover"}
    box = torch.zeros(4)
    found = [misses.Miss(0, box, 1, box, 0.9, 0.3, "classification", 2, 2),
             misses.Miss(1, box, 1, box, 0.2, 0.1, "localisation", 0, None),
             misses.Miss(2, box, 2, box, 0.8, 0.01, "classification", 0, None)]
    rows = [misses.miss_row("000001", miss, names) for miss in found]
    assert rows[0] == {"image": "000001", "class": "Shirt", "kind": "classification",
                       "best_iou": 0.9, "score": 0.3, "won_by": "Pullover",
                       "detected_as": "Pullover"}
    assert tuple(rows[0]) == misses.MISS_FIELDS
    summary = misses.miss_summary(rows)
    assert summary["total"] == 3 and summary["by_kind"] == {"classification": 2,
                                                           "localisation": 1}
    assert summary["by_class"]["Shirt"]["won_by"] == {"Pullover": 1}
    table = misses.miss_table(summary).splitlines()
    assert table[0].startswith("Missed objects: 3") and len(table) == 4
