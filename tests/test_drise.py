"""D-RISE against a literal one-mask-at-a-time implementation of the paper's weighting, and the
identities its batched code must keep."""
from __future__ import annotations

import pytest
import torch
from conftest import random_image
from torchvision.ops import box_iou

import drise


def test_masks_are_rise_masks() -> None:
    g = torch.Generator().manual_seed(0)
    masks = drise.rise_masks(400, (40, 56), grid=4, keep=0.5, generator=g)
    assert masks.shape == (400, 40, 56) and 0 <= masks.min() and masks.max() <= 1
    assert masks.mean().item() == pytest.approx(0.5, abs=0.05)
    # soft edges (bilinear), and a random shift: not every mask is aligned to the same grid
    assert ((masks > 0.01) & (masks < 0.99)).float().mean() > 0.1
    again = drise.rise_masks(400, (40, 56), grid=4, keep=0.5,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)
    with pytest.raises(drise.ParamError):
        drise.rise_masks(0, (8, 8))


def test_mask_weight_is_the_best_iou_times_cosine() -> None:
    targets = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    labels = torch.tensor([1, 2])
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20], [21, 21, 30, 30]])
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6]])
    got = drise.mask_weights(targets, labels, boxes, probs)
    literal = []
    for t, c in zip(targets, labels):
        best = 0.0
        for box, p in zip(boxes, probs):
            iou = box_iou(t[None], box[None]).item()
            onehot = torch.zeros(3)
            onehot[c] = 1
            best = max(best, iou * torch.dot(onehot, p).item() / (p.norm().item()))
        literal.append(best)
    assert got.tolist() == pytest.approx(literal)
    assert drise.mask_weights(targets, labels, boxes[:0], probs[:0]).tolist() == [0.0, 0.0]


def test_detections_with_probabilities_are_the_detectors_own(detector) -> None:
    image = random_image(64, 90)
    (theirs,) = detector([image])
    ((boxes, probs, objectness),) = drise.detections_with_probabilities(detector, [image])
    assert objectness is None
    assert torch.allclose(boxes, theirs["boxes"], atol=1e-4)
    # a detection's score is the probability of its class in the vector it came from
    own = probs.gather(1, theirs["labels"][:, None])[:, 0]
    assert torch.allclose(own, theirs["scores"], atol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-5)


def literal_drise(model, image, boxes, labels, masks: torch.Tensor) -> torch.Tensor:
    """The paper's sum, one masked image through the detector at a time."""
    total = torch.zeros(len(boxes), *image.shape[-2:])
    for mask in masks:
        (found,) = drise.detections_with_probabilities(model, [image * mask])
        total += drise.mask_weights(boxes, labels, *found)[:, None, None] * mask
    return drise.normalize_heatmaps(total / len(masks))


def test_batched_maps_equal_the_literal_loop_and_serve_every_detection(detector) -> None:
    image = random_image(64, 90, seed=3)
    (found,) = detector([image])
    boxes, labels = found["boxes"][:3], found["labels"][:3]
    assert len(boxes) == 3
    was = [(m, m.training) for m in detector.modules()]
    maps = drise.drise_maps(detector, image, boxes, labels, masks=6, grid=4, batch_size=4,
                            seed=5)
    assert all(m.training == flag for m, flag in was)
    g = torch.Generator().manual_seed(5)
    every = torch.cat([drise.rise_masks(4, (64, 90), 4, 0.5, g),
                       drise.rise_masks(2, (64, 90), 4, 0.5, g)])
    assert torch.allclose(maps, literal_drise(detector, image, boxes, labels, every), atol=1e-5)
    alone = drise.drise_maps(detector, image, boxes[1:2], labels[1:2], masks=6, grid=4,
                             batch_size=4, seed=5)
    assert torch.allclose(alone[0], maps[1], atol=1e-5)
    assert maps.shape == (3, 64, 90) and maps.min() >= 0 and maps.max() <= 1


def test_explain_detections_drise_result(detector) -> None:
    image = random_image(64, 90, seed=3)
    result = drise.explain_detections_drise(detector, image, score_thresh=0.0, max_explained=2,
                                            masks=4, grid=4, batch_size=4)
    assert result.method == "drise" and list(result.maps) == ["input"]
    assert len(result.explained) == 2 and result.heatmap("input", 1).shape == (64, 90)
    top = float(result.scores.max())
    nothing = drise.explain_detections_drise(detector, image, score_thresh=min(1.0, top + 1e-3),
                                             masks=4)
    assert top < 1.0 and len(nothing.explained) == 0 and nothing.maps["input"].shape == (0, 64, 90)


def test_the_one_explanation_pass_dispatches_every_method(detector) -> None:
    """detection.explain takes a target and a method name: D-RISE and the gradient methods go
    through it; an unknown name is refused with the parameter named."""
    import detection
    from errors import ParamError
    image = random_image(64, 90, seed=3)
    target = detection.DetectionTarget(0.0, 2)
    settings = drise.DriseSettings(masks=4, grid=4, batch_size=4)
    via_pass = detection.explain(detector, image, target, method="drise", drise=settings)
    direct = drise.explain_detections_drise(detector, image, score_thresh=0.0, max_explained=2,
                                            masks=4, grid=4, batch_size=4)
    assert torch.equal(via_pass.maps["input"], direct.maps["input"])
    assert settings.as_dict() == {"masks": 4, "grid": 4, "keep": 0.5, "seed": 0}
    layercam = detection.explain(detector, image, target, ["layer4"], "layercam")
    assert layercam.method_title == "LayerCAM" and layercam.maps["layer4"].shape[0] == 2
    with pytest.raises(ParamError, match="^method: unknown detection method 'lime'"):
        detection.explain(detector, image, target, method="lime")
