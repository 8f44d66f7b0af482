"""Every torchvision detector of ``--det_arch``, with random weights at a small input: each
detection is explained through its own proposal or anchor, the model is left as found, D-RISE
and the miss explanations run for every family, and the command line's errors are one line."""
from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
from conftest import random_image
from torchvision.models.detection import FasterRCNN
from torchvision.ops import clip_boxes_to_image

import detection as det
import detectors
import drise
import main
import misses
import registry
from cli import assert_one_line_error

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
SIZES = {"ssd300_vgg16": 268}   # its smallest input; every other arch runs at 128 px
FAMILY = {arch: family for arch, (family, _) in registry.DET_ARCHS.items()}


@pytest.fixture(scope="module", params=detectors.ARCHS)
def arch_model(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    arch = request.param
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = detectors.build_coco_detector(arch, min_size=SIZES.get(arch, 128), score_thresh=0.0)
    return arch, model


def literal_gradcam(model: torch.nn.Module, image: torch.Tensor, layer: str, source: int,
                    label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The class logit of one proposal or anchor, from the model's own modules run afresh for
    it alone, and the Grad-CAM map of that logit at ``layer`` (written out here)."""
    module = dict(model.named_modules())[det.backbone_layers(model)[layer]]
    store = {}
    handle = module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.enable_grad():
            batch, _ = model.transform([image])
            features = model.backbone(batch.tensors)
            if isinstance(model, FasterRCNN):
                proposals, _ = model.rpn(batch, features)
                pooled = model.roi_heads.box_roi_pool(
                    features, [proposals[0][source:source + 1]], batch.image_sizes)
                logit = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))[0][0, label]
            else:
                levels = list(features.values()) if isinstance(features, dict) else [features]
                logit = model.head(levels)["cls_logits"][0, source, label]
            (grad,) = torch.autograd.grad(logit, store["a"])
    finally:
        handle.remove()
    activation, grad = store["a"].detach()[0], grad[0]
    return logit.detach(), (grad.mean(dim=(1, 2))[:, None, None] * activation).sum(0)


def raw_head(model: torch.nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The one-stage head's outputs in the model's own forward (a hook, no project code)."""
    seen = {}
    handle = model.head.register_forward_hook(lambda m, i, o: seen.update(o))
    try:
        with torch.no_grad():
            (found,) = model([image])
    finally:
        handle.remove()
    return {k: v[0] for k, v in seen.items()} | {"found": found}


def test_each_detection_is_explained_through_its_own_anchor_or_proposal(arch_model) -> None:
    arch, model = arch_model
    image = random_image(100, 140)
    layer = registry.det_default_layer(arch)
    flags = [p.requires_grad for p in model.parameters()]
    state = det.detector_pass(model, image, (layer,), 0.0, 3, None)
    assert len(state.explained) == 3, "random weights with a 0 floor give detections"
    (maps,) = det.gradcam_maps(state)
    assert maps.shape[0] == 3 and bool(torch.isfinite(maps).all())
    assert not torch.equal(maps[0], maps[1]) or not torch.equal(maps[1], maps[2])
    # the model is left as found: no hook, eval mode, requires_grad, no weight gradient
    assert not any(m._forward_hooks for m in model.modules()) and not model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    # each target is the logit of the traced proposal / anchor, run again for it alone, and
    # its map is the Grad-CAM of that logit alone
    sources = state.sources.tolist()
    for i, index in enumerate(state.explained.tolist()):
        label = int(state.labels[index])
        logit, literal = literal_gradcam(model, image, layer, sources[i], label)
        torch.testing.assert_close(state.targets[i].detach(), logit, rtol=1e-5, atol=1e-5)
        scale = float(literal.abs().max()) + 1e-12
        torch.testing.assert_close(maps[i] / scale, literal / scale, rtol=1e-4, atol=1e-4)
    if FAMILY[arch] == "fasterrcnn":
        return
    # one-stage: at the traced anchor, the raw head outputs of the model's own forward give the
    # detection's score and box, as torchvision's post-processing computes them
    head = raw_head(model, image)
    batch, _ = model.transform([image])
    size = batch.image_sizes[0]
    features = model.backbone(batch.tensors)
    levels = list(features.values()) if isinstance(features, dict) else [features]
    anchors = model.anchor_generator(batch, levels)[0]
    for i, index in enumerate(state.explained.tolist()):
        a, label = sources[i], int(state.labels[index])
        logits = head["cls_logits"][a]
        assert float(logits[label]) == pytest.approx(float(state.targets[i].detach()), abs=1e-5)
        if FAMILY[arch] == "ssd":
            score = F.softmax(logits, -1)[label]
            box = model.box_coder.decode_single(head["bbox_regression"][a:a + 1], anchors[a:a + 1])
        elif FAMILY[arch] == "fcos":
            score = torch.sqrt(torch.sigmoid(logits[label]) * torch.sigmoid(head["bbox_ctrness"][a, 0]))
            box = model.box_coder.decode(head["bbox_regression"][a:a + 1], anchors[a:a + 1])
        else:
            score = torch.sigmoid(logits[label])
            box = model.box_coder.decode_single(head["bbox_regression"][a:a + 1], anchors[a:a + 1])
        assert float(score) == pytest.approx(float(state.scores[index]), abs=1e-6)
        box = model.transform.postprocess([{"boxes": clip_boxes_to_image(box, size)}], [size],
                                          [tuple(image.shape[-2:])])[0]["boxes"][0]
        torch.testing.assert_close(box, state.boxes[index].detach(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(head["found"]["scores"], state.scores)


def test_model_is_left_as_found_after_an_error(arch_model) -> None:
    _, model = arch_model
    flags = [p.requires_grad for p in model.parameters()]
    model.train()

    def fail(module, inputs, output):
        raise RuntimeError("a failure inside the detector pass")
    failing = model.backbone.register_forward_hook(fail)    # fails mid-pass, after the checks
    try:
        with pytest.raises(RuntimeError, match="inside the detector pass"):
            det.explain_detections(model, random_image(40, 40), None, 0.0, 2)
        failing.remove()
        assert model.training and all(m.training for m in model.modules())
        assert not any(m._forward_hooks for m in model.modules())
        assert [p.requires_grad for p in model.parameters()] == flags
    finally:
        model.eval()


def test_unknown_layer_names_the_detectors_layers(arch_model) -> None:
    arch, model = arch_model
    with pytest.raises(det.ParamError, match=", ".join(registry.det_layers(arch))):
        det.explain_detections(model, random_image(64, 64), ("layer9",), 0.0, 1)


@pytest.mark.parametrize("arch", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn",
                                  "ssdlite320_mobilenet_v3_large"])
def test_drise_and_misses_run_for_every_one_stage_family(arch: str) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = detectors.build_coco_detector(arch, min_size=128, score_thresh=0.0)
    image = random_image(100, 140, seed=1)
    ((boxes, probs, objectness),) = drise.detections_with_probabilities(model, [image])
    with torch.no_grad():
        (theirs,) = model([image])
    torch.testing.assert_close(boxes, theirs["boxes"], rtol=1e-5, atol=1e-3)
    own = probs.gather(1, theirs["labels"][:, None])[:, 0]
    if FAMILY[arch] == "fcos":   # the score is the geometric mean of class and centerness
        own = torch.sqrt(own * objectness)
    else:
        assert objectness is None
    torch.testing.assert_close(own, theirs["scores"], rtol=1e-5, atol=1e-6)
    result = drise.explain_detections_drise(model, image, 0.0, 2, masks=2, batch_size=2)
    assert result.maps["input"].shape == (2, 100, 140)
    assert bool(torch.isfinite(result.maps["input"]).all())
    truth, labels = torch.tensor([[5.0, 5, 60, 60], [70, 20, 130, 90]]), torch.tensor([1, 3])
    found = misses.explain_misses(model, image, result, truth, labels, 0.9)
    assert [m.truth_index for m in found] == [0, 1]
    layer = registry.det_default_layer(arch)
    for miss in found:
        assert miss.kind in misses.KINDS and 0 <= miss.iou <= 1
        assert miss.maps[layer].shape == (100, 140)
    assert not any(m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------------------------
# Command line


def cli(capsys: pytest.CaptureFixture, *argv: str) -> subprocess.CompletedProcess:
    code = main.main(["--det_vis", *map(str, argv)])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)


def test_cli_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    image = SAMPLES / "chelsea.jpg"
    assert_one_line_error(cli(capsys, "--det_img", image, "--det_arch", "retinanet"),
                          "--det_arch", "retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2")
    assert_one_line_error(cli(capsys, "--det_img", image, "--det_arch", "ssd300_vgg16",
                              "--det_layer", "layer4"),
                          "--det_layer", "layer4", "stride8, stride16, stride32")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    url = detectors.coco_weights("fcos_resnet50_fpn").url
    assert_one_line_error(cli(capsys, "--det_img", image, "--det_arch", "fcos_resnet50_fpn"),
                          url.rsplit("/", 1)[-1], url, str(tmp_path / "torch" / "hub"))


def test_cli_explains_a_one_stage_detector_from_a_state_dict(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = detectors.build_coco_detector("ssdlite320_mobilenet_v3_large")
    weights = tmp_path / "ssdlite.pth"
    torch.save(model.state_dict(), weights)
    result = cli(capsys, "--det_img", SAMPLES / "chelsea.jpg", "--det_arch",
                      "ssdlite320_mobilenet_v3_large", "--det_weights", weights,
                      "--det_min_size", 128, "--det_score_thresh", 0, "--det_max", 2,
                      "--det_layer", "stride16,stride64", "--out_dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 detections explained" in result.stdout
    written = sorted(p.name for p in (tmp_path / "detection").iterdir())
    assert written == ["chelsea_gradcam_stride16.png", "chelsea_gradcam_stride64.png"]
    other = tmp_path / "retina.pth"
    torch.save(detectors.build_coco_detector("fcos_resnet50_fpn", min_size=64).state_dict(), other)
    bad = cli(capsys, "--det_img", SAMPLES / "chelsea.jpg", "--det_arch",
                   "retinanet_resnet50_fpn", "--det_weights", other, "--out_dir", tmp_path)
    assert_one_line_error(bad, "does not fit retinanet_resnet50_fpn")


def test_voc_run_with_a_one_stage_detector_explains_its_misses(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from test_detection import write_voc_tar
    torch.manual_seed(0)
    weights = tmp_path / "ssdlite.pth"
    torch.save(detectors.build_coco_detector("ssdlite320_mobilenet_v3_large").state_dict(), weights)
    tar = write_voc_tar(tmp_path / "VOCtest_06-Nov-2007.tar", ["000001", "000002"])
    result = cli(capsys, "--voc_path", tar, "--det_arch", "ssdlite320_mobilenet_v3_large",
                 "--det_weights", weights, "--det_min_size", 128, "--det_num", 2,
                 "--det_explain_missed", "--out_dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "out" / "detection"
    report = json.loads((folder / "voc_metrics.json").read_text())
    assert report["arch"] == "ssdlite320_mobilenet_v3_large"
    rows = (folder / "misses.csv").read_text().splitlines()
    assert len(rows) == 1 + 3   # the header, and every object missed at 0.5
    assert all(",classification," in row or ",localisation," in row for row in rows[1:])
    assert len(list((folder / "misses").iterdir())) == 3
