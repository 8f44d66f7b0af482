"""Faster R-CNN Grad-CAM: per-detection heatmaps, the padding crop, VOC reading and numbers.

The detector here has random weights (torchvision's ``weights=None, weights_backbone=None``)
at a small input size, with score threshold 0 so that it returns boxes; nothing is downloaded.
"""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_image
from PIL import Image
from torchvision.models.detection.roi_heads import RoIHeads

import cli_detect
import detection as det
import detectors
import detheads
import detmetrics
import main
import voc
from cam import normalize_heatmaps
from cli import assert_one_line_error, run_main
from errors import UserError

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
PERSON, DOG = detectors.COCO_CLASSES.index("person"), detectors.COCO_CLASSES.index("dog")


@pytest.fixture(scope="module")
def weights_file(detector: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "random_fasterrcnn.pth"
    torch.save(detector.state_dict(), path)
    return path


@contextlib.contextmanager
def background_only(model: torch.nn.Module) -> Iterator[None]:
    """The background class wins every proposal: the detector finds nothing."""
    bias = model.roi_heads.box_predictor.cls_score.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias[0] = 1e4
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def cli(capsys: pytest.CaptureFixture, *argv: str) -> subprocess.CompletedProcess:
    """``main.main(argv)`` in this process, as a completed process (status, stdout, stderr)."""
    code = main.main(["--det_vis", *map(str, argv)])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)


def voc_xml(objects: list[tuple[str, tuple[int, int, int, int], int]], w: int, h: int) -> bytes:
    parts = [f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"]
    for name, (x1, y1, x2, y2), difficult in objects:
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                     f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return ("".join(parts) + "</annotation>").encode()


def jpeg_bytes(h: int, w: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# Two images, annotated as VOC does (1-based inclusive pixel boxes); one object is difficult.
VOC_IMAGES = {
    "000001": ((60, 80), [("person", (11, 6, 30, 40), 0), ("dog", (41, 21, 70, 50), 1)]),
    "000002": ((72, 56), [("person", (5, 5, 40, 60), 0)]),
    "000003": ((50, 90), [("car", (20, 10, 80, 45), 0)]),
}


def write_voc_tar(path: Path, ids: list[str], test_list: bool = True) -> Path:
    """A VOC 2007-style tar: JPEGs, XML annotations and ImageSets/Main/test.txt."""
    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(f"VOCdevkit/VOC2007/{name}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w") as tar:
        for seed, image_id in enumerate(ids):
            (h, w), objects = VOC_IMAGES[image_id]
            add(tar, f"JPEGImages/{image_id}.jpg", jpeg_bytes(h, w, seed))
            add(tar, f"Annotations/{image_id}.xml", voc_xml(objects, w, h))
        if test_list:
            add(tar, "ImageSets/Main/test.txt", "".join(f"{i}\n" for i in ids).encode())
    return path


# --------------------------------------------------------------------------------------------
# Grad-CAM per detection


def test_fit_to_image_drops_the_padding_before_resizing() -> None:
    # The resized image (56x80, not a multiple of 32) is the top-left of the 64x96 padded
    # input; the original image is 28x40, half the resized size, so the expected map is exact.
    padded, resized, original = (64, 96), (56, 80), (28, 40)
    raw = torch.zeros(1, *padded)
    raw[0, :56, 40:80] = 1.0        # the right half of the image
    raw[0, 56:, :] = 9.0            # bottom padding
    raw[0, :, 80:] = 9.0            # right padding
    heat = det.fit_to_image(raw, resized, padded, original)[0]
    expected = torch.zeros(original)
    expected[:, 20:] = 1.0
    assert heat.shape == original
    assert torch.equal(heat, expected)
    # Resizing the padded map without the crop would not give it: the layout tells them apart.
    assert not torch.equal(normalize_heatmaps(raw, original)[0], expected)


def test_one_forward_pass_explains_every_detection(detector: torch.nn.Module) -> None:
    image = random_image(70, 130)  # resized to 86x160 (height not a multiple of 32), padded 96x160
    calls = []
    handle = detector.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        result = det.explain_detections(detector, image, ("layer3", "layer4"), score_thresh=0.0,
                                        max_explained=3)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert result.explained.tolist() == [0, 1, 2]
    assert bool((result.scores[:-1] >= result.scores[1:]).all())
    for layer in ("layer3", "layer4"):
        maps = torch.stack([result.heatmap(layer, rank) for rank in range(3)])
        assert maps.shape == (3, 70, 130)
        assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
        assert torch.allclose(maps.amax(dim=(1, 2)), torch.ones(3))
        assert result.maps[layer].shape[-2:] != (70, 130)  # kept at the detector's resolution
    assert not torch.equal(result.heatmap("layer4", 0), result.heatmap("layer4", 1))


def test_shared_pass_gives_each_detection_its_own_gradient(detector: torch.nn.Module) -> None:
    image = random_image(80, 100, seed=1)
    shared = det.explain_detections(detector, image, ("layer4",), score_thresh=0.0,
                                    max_explained=3)
    # Detection 2 alone, from a fresh pass: Grad-CAM written out here, not through the module.
    state = det.detector_pass(detector, image, ("layer4",), 0.0, 3, None)
    (grad,) = torch.autograd.grad(state.targets[2], state.activations)
    activation = state.activations[0].detach()[0]
    raw = torch.relu((grad[0].mean(dim=(1, 2))[:, None, None] * activation).sum(0))
    alone = det.fit_to_image(raw[None], state.resized, state.padded, state.original)[0]
    assert torch.allclose(shared.heatmap("layer4", 2), alone, atol=1e-5)
    # Each explained score is the class logit of a proposal whose probability is the detection's
    # score, as torchvision's own forward computes them.
    seen = []
    handle = detector.roi_heads.box_predictor.register_forward_hook(
        lambda module, inputs, output: seen.append(output[0].detach()))
    try:
        with torch.no_grad():
            detector([image])
    finally:
        handle.remove()
    logits = seen[0]
    for i, index in enumerate(state.explained.tolist()):
        label, score = int(state.labels[index]), float(state.scores[index])
        rows = (logits[:, label] - state.targets[i].detach()).abs() < 1e-4
        assert rows.any()
        assert F.softmax(logits[rows], -1)[:, label].sub(score).abs().min() < 1e-5


def test_explained_logit_belongs_to_the_detections_proposal(detector: torch.nn.Module) -> None:
    roi_heads: RoIHeads = detector.roi_heads
    proposals = torch.tensor([[0, 0, 20, 20], [40, 0, 60, 20], [0, 40, 20, 60],
                              [40, 40, 60, 60], [80, 80, 100, 100]], dtype=torch.float32)
    logits = torch.randn(5, 91, generator=torch.Generator().manual_seed(0))
    logits[3] = logits[1]                       # rows 1 and 3 tie on every score
    regression = torch.zeros(5, 91 * 4)         # each decoded box is its proposal
    (boxes,), (scores,), (labels,) = roi_heads.postprocess_detections(
        logits, regression, [proposals], [(128, 128)])
    rows = detheads.source_rows(roi_heads, logits, regression, proposals, (128, 128),
                            boxes, scores, labels)
    assert torch.allclose(proposals[rows], boxes, atol=1e-4)
    assert torch.equal(F.softmax(logits, -1)[rows, labels], scores)
    assert {1, 3} <= set(rows.tolist())


def test_model_is_left_as_found_also_after_an_error(detector: torch.nn.Module) -> None:
    layer = detector.backbone.body.layer4
    flags = [p.requires_grad for p in detector.parameters()]
    detector.train()

    def fails(*args, **kwargs):   # past the entry checks, in the middle of the pass
        raise RuntimeError("size of tensor")
    detector.rpn.forward = fails
    try:
        with pytest.raises(RuntimeError, match="size of tensor"):
            det.explain_detections(detector, torch.rand(3, 40, 40), ("layer4",), 0.0, 2)
        assert detector.training and detector.backbone.body.layer4.training
        assert not layer._forward_hooks
        assert [p.requires_grad for p in detector.parameters()] == flags
    finally:
        del detector.rpn.forward
        detector.eval()
    det.explain_detections(detector, random_image(64, 64), ("layer4",), 0.0, 2)
    assert not detector.training and not layer._forward_hooks
    assert [p.requires_grad for p in detector.parameters()] == flags
    assert all(p.grad is None for p in detector.parameters())


@pytest.mark.parametrize("method", ["layercam", "hirescam", "gradcampp"])
def test_other_methods_follow_their_formula_per_detection(detector: torch.nn.Module,
                                                         method: str) -> None:
    image = random_image(80, 100, seed=2)
    state = det.detector_pass(detector, image, ("layer3",), 0.0, 3, None)
    activation = state.activations[0].detach()[0]
    literal = []
    for i in range(3):
        (grad,) = torch.autograd.grad(state.targets[i], state.activations, retain_graph=True)
        g = grad[0]
        if method == "layercam":     # Jiang et al. (2021): sum_k relu(dY/dA_k) * A_k
            literal.append((g.clamp(min=0) * activation).sum(0))
        elif method == "hirescam":   # Draelos & Carin (2020): sum_k dY/dA_k * A_k
            literal.append((g * activation).sum(0))
        else:                        # Grad-CAM++ alphas with the exponential closed form
            g2, g3 = g.pow(2), g.pow(3)
            denom = 2 * g2 + activation.sum(dim=(1, 2), keepdim=True) * g3
            alpha = torch.where(g != 0, g2 / torch.where(denom != 0, denom, 1), 0)
            weights = (alpha * g.clamp(min=0)).sum(dim=(1, 2))
            literal.append((weights[:, None, None] * activation).sum(0))
    fresh = det.detector_pass(detector, image, ("layer3",), 0.0, 3, None)
    (maps,) = det.gradcam_maps(fresh, method)
    torch.testing.assert_close(maps, torch.stack(literal), rtol=1e-4, atol=1e-6)
    result = det.explain_detections(detector, image, ("layer3",), 0.0, 3, method=method)
    assert result.method == method and result.method_title != "Grad-CAM"


def test_no_detection_to_explain(detector: torch.nn.Module) -> None:
    result = det.explain_detections(detector, random_image(64, 90), ("layer4",), 0.0, 5,
                                    allowed=set())
    assert len(result.scores) > 0 and len(result.explained) == 0
    assert result.maps["layer4"].shape[0] == 0 and result.image_size == (64, 90)


def with_image(args, path: str):
    """The flags of a ``--det_img PATH`` run, as the command layer reads them."""
    args.det_img = path
    return args


def test_single_image_without_detections_exits_0_with_one_line(
        detector: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = main.build_parser().parse_args(["--det_vis", "--out_dir", str(tmp_path)])
    image = det.read_image(SAMPLES / "chelsea.jpg")
    with background_only(detector):
        assert cli_detect.detect_image(with_image(args, "chelsea.jpg"), detectors.coco_detector(detector), image,
                                     ["layer4"], torch.device("cpu")) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["chelsea.jpg: no detection with score >= 0.50; nothing to explain"]
    assert not (tmp_path / "detection").exists()


def test_detector_layout_takes_torchvision_state_dicts(detector: torch.nn.Module) -> None:
    model = detectors.build_detector(detector.state_dict(), min_size=96)
    theirs, ours = detector.state_dict(), model.state_dict()
    assert all(torch.equal(theirs[k], v) for k, v in ours.items())
    assert set(theirs) - set(ours) == {k for k in theirs if k.endswith("num_batches_tracked")}
    assert not model.training


# --------------------------------------------------------------------------------------------
# Command line


def test_cli_writes_panels_for_one_image(weights_file: Path, tmp_path: Path) -> None:
    result = run_main("--det_vis", "--det_img", SAMPLES / "chelsea.jpg", "--det_weights",
                      weights_file, "--det_min_size", 64, "--det_score_thresh", 0, "--det_max", 2,
                      "--det_per_box", "--out_dir", tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "detection"
    panel = np.asarray(Image.open(folder / "chelsea_gradcam_layer4.png"))
    # 451x300 is shrunk to the detector's input (64 px shorter side: 96x64) before it becomes a
    # float tensor, then drawn enlarged 4x (panels are at least 256 px).
    assert panel.shape[1] == 3 * 4 * 96 + 2 * 8 and panel.shape[0] > 4 * 64
    boxes = sorted(p.name for p in (folder / "chelsea_layer4_boxes").iterdir())
    assert len(boxes) == 2 and boxes[0].startswith("01_") and boxes[1].startswith("02_")
    assert "2 detections explained" in result.stdout


def test_voc_tar_end_to_end(weights_file: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture) -> None:
    tar = write_voc_tar(tmp_path / "VOCtest_06-Nov-2007.tar", ["000001", "000002", "000003"])
    result = cli(capsys, "--voc_path", tar, "--det_weights", weights_file, "--det_min_size", 64,
                 "--det_score_thresh", 0, "--det_max", 2, "--det_num", 2,
                 "--out_dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "VOC 2007 test" in result.stderr  # the progress bar
    folder = tmp_path / "out" / "detection"
    report = json.loads((folder / "voc_metrics.json").read_text())
    assert report["images"] == 2
    assert list(report["ap"]) == list(voc.VOC_CLASSES)
    assert report["ap"]["car"] is None and report["ap"]["dog"] is None  # no (countable) truth
    assert report["map_classes"] == 1 and 0.0 <= report["ap"]["person"] <= 1.0
    for image_id in ("000001", "000002"):
        panel = (folder / f"{image_id}_gradcam_layer4.png").is_file()
        assert panel != (image_id in report["images_without_detections"])
    assert not (folder / "000003_gradcam_layer4.png").exists()
    assert "mAP" in result.stdout and "pointing game" in result.stdout


def test_voc_images_without_detections_are_reported_and_skipped(
        detector: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tar = write_voc_tar(tmp_path / "voc.tar", ["000001", "000002"])
    args = main.build_parser().parse_args(["--det_vis", "--out_dir", str(tmp_path),
                                           "--det_score_thresh", "0"])
    with voc.VOCReader(tar) as reader, background_only(detector):
        assert cli_detect.detect_voc(args, detectors.coco_detector(detector), reader, ["layer4"], torch.device("cpu")) == 0
    report = json.loads((tmp_path / "detection" / "voc_metrics.json").read_text())
    out = capsys.readouterr().out
    assert report["images_without_detections"] == ["000001", "000002"]
    assert "000001: no VOC-class detection with score >= 0.00; skipped" in out
    assert report["ap"]["person"] == 0.0 and report["explained_detections"] == 0
    assert report["layers"]["layer4"]["pointing_game"] is None


# --------------------------------------------------------------------------------------------
# Bad input: one line, no traceback


def test_bad_images_give_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 this is not a jpeg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((SAMPLES / "chelsea.jpg").read_bytes()[:3000])
    for path, fragment in ((tmp_path / "missing.jpg", "image not found"),
                           (corrupt, "cannot read image"), (truncated, "cannot read image")):
        assert_one_line_error(cli(capsys, "--det_img", path), fragment, path.name)


def test_grayscale_rgba_and_palette_images_become_rgb(
        detector: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gray = np.arange(40 * 60, dtype=np.uint16).reshape(40, 60).astype(np.uint8)
    rgba = np.dstack([np.full((40, 60, 3), 200, np.uint8), np.full((40, 60), 7, np.uint8)])
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(gray, "L").convert("P").save(tmp_path / "palette.png")
    image = det.read_image(tmp_path / "gray.png")
    assert image.shape == (40, 60, 3) and image.dtype == np.uint8
    assert (image == gray[..., None]).all()
    assert (det.read_image(tmp_path / "rgba.png") == 200).all()
    assert det.read_image(tmp_path / "palette.png").shape == (40, 60, 3)
    args = main.build_parser().parse_args(["--det_vis", "--out_dir", str(tmp_path),
                                           "--det_score_thresh", "0", "--det_max", "1"])
    assert cli_detect.detect_image(with_image(args, "gray.png"), detectors.coco_detector(detector), image,
                                     ["layer4"], torch.device("cpu")) == 0
    assert (tmp_path / "detection" / "gray_gradcam_layer4.png").is_file()
    assert "1 detection explained:" in capsys.readouterr().out


def test_large_images_shrink_to_the_detector_input_while_8_bit(tmp_path: Path) -> None:
    big = np.zeros((1500, 2000, 3), np.uint8)
    big[:, 1000:] = 255
    Image.fromarray(big).save(tmp_path / "big.png")
    image = det.read_image(tmp_path / "big.png", fit=(300, 500))  # shorter side 300, as torchvision
    assert image.shape == (300, 400, 3) and image.dtype == np.uint8
    assert image[:, :190].max() == 0 and image[:, 210:].min() == 255
    small = det.read_image(SAMPLES / "chelsea.jpg", fit=(800, 1333))  # never enlarged
    assert small.shape == (300, 451, 3)


def test_missing_or_corrupt_voc_gives_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    assert_one_line_error(cli(capsys, "--voc_path", tmp_path / "VOCtest_06-Nov-2007.tar"),
                          "VOC 2007 test not found", "VOCtest_06-Nov-2007.tar", voc.VOC_URL)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"no tar here" * 100)
    assert_one_line_error(cli(capsys, "--voc_path", garbage), "garbage.tar")


def test_missing_coco_weights_with_failed_download(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    result = cli(capsys, "--det_img", SAMPLES / "chelsea.jpg")
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert_one_line_error(result, detectors.WEIGHTS_FILE, detectors.COCO_WEIGHTS.url, str(folder))
    assert detectors.COCO_WEIGHTS.url == ("https://download.pytorch.org/models/"
                                    "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")


def test_bad_weights_files_give_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = SAMPLES / "chelsea.jpg"
    assert_one_line_error(cli(capsys, "--det_img", image, "--det_weights", tmp_path / "no.pth"),
                          "detector weights not found")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert_one_line_error(cli(capsys, "--det_img", image, "--det_weights", garbage),
                          "garbage.pth")
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}, other)
    assert_one_line_error(cli(capsys, "--det_img", image, "--det_weights", other),
                          "does not fit Faster R-CNN", "missing")
    wrong_shape = detectors.build_detector(min_size=64).state_dict()
    wrong_shape["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(21, 1024)
    torch.save(wrong_shape, tmp_path / "voc21.pth")
    assert_one_line_error(cli(capsys, "--det_img", image, "--det_weights",
                              tmp_path / "voc21.pth"), "does not fit Faster R-CNN", "has shape (21, 1024)")


def test_bad_flags_give_one_line(capsys: pytest.CaptureFixture) -> None:
    image = SAMPLES / "chelsea.jpg"
    assert_one_line_error(cli(capsys, "--det_img", image, "--det_layer", "layer4,fc"),
                          "--det_layer", "fc")
    assert_one_line_error(cli(capsys, "--det_img", image, "--det_score_thresh", "1.5"),
                          "--det_score_thresh")
    assert det.parse_layers("layer4, layer2,layer4") == ["layer4", "layer2"]


# --------------------------------------------------------------------------------------------
# VOC reading


def test_voc_tar_and_folder_read_the_same(tmp_path: Path) -> None:
    tar = write_voc_tar(tmp_path / "voc.tar", ["000002", "000001"])
    with tarfile.open(tar) as archive:
        archive.extractall(tmp_path / "extracted", filter="data")
    with voc.VOCReader(tar) as packed, voc.VOCReader(tmp_path / "extracted" / "VOCdevkit") as flat:
        assert packed.ids() == flat.ids() == ["000002", "000001"]
        for image_id in packed.ids():
            assert np.array_equal(packed.image(image_id), flat.image(image_id))
            a, b = packed.annotation(image_id), flat.annotation(image_id)
            assert torch.equal(a.boxes, b.boxes) and torch.equal(a.difficult, b.difficult)
        truth = packed.annotation("000001")
        assert packed.image("000002").shape == (72, 56, 3)
    assert truth.boxes.tolist() == [[10, 5, 30, 40], [40, 20, 70, 50]]
    assert truth.labels.tolist() == [voc.VOC_CLASSES.index("person"), voc.VOC_CLASSES.index("dog")]
    assert truth.difficult.tolist() == [False, True]
    (tmp_path / "extracted/VOCdevkit/VOC2007/ImageSets/Main/test.txt").unlink()
    with voc.VOCReader(tmp_path / "extracted") as flat:
        assert flat.ids() == ["000001", "000002"]


def test_bad_annotation_gives_one_line() -> None:
    with pytest.raises(UserError, match="not valid VOC XML"):
        voc.parse_voc_annotation(b"<annotation><object><name>cat", "broken.xml")
    kept = voc.parse_voc_annotation(voc_xml([("unicorn", (1, 1, 5, 5), 0),
                                             ("cat", (1, 1, 5, 5), 0)], 10, 10), "x.xml")
    assert kept.labels.tolist() == [voc.VOC_CLASSES.index("cat")]


def test_coco_to_voc_maps_the_20_classes() -> None:
    mapping = detectors.coco_to_voc()
    names = {detectors.COCO_CLASSES[label]: voc.VOC_CLASSES[c] for label, c in mapping.items()}
    assert sorted(names.values()) == sorted(voc.VOC_CLASSES)
    assert names["airplane"] == "aeroplane" and names["tv"] == "tvmonitor"
    assert names["couch"] == "sofa" and names["dining table"] == "diningtable"
    assert names["motorcycle"] == "motorbike" and names["potted plant"] == "pottedplant"
    assert "giraffe" not in names


# --------------------------------------------------------------------------------------------
# Numbers, on hand-made detections and heatmaps


def test_voc07_ap_by_hand() -> None:
    # Ground truth: image a has a person and a difficult person, image b one person (npos 2).
    truth = {"a": (torch.tensor([[0., 0, 10, 10], [50, 50, 60, 60]]), torch.tensor([False, True])),
             "b": (torch.tensor([[20., 20, 40, 40]]), torch.tensor([False]))}
    detections = [("b", 0.9, torch.tensor([20., 20, 40, 40])),   # TP
                  ("a", 0.8, torch.tensor([50., 50, 60, 60])),   # difficult: ignored
                  ("a", 0.7, torch.tensor([80., 80, 90, 90])),   # FP: nothing there
                  ("a", 0.6, torch.tensor([0., 0, 10, 9])),      # TP (IoU 0.9)
                  ("b", 0.5, torch.tensor([21., 20, 40, 40]))]   # FP: duplicate
    # precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1: six points at 1, five at 2/3.
    assert detmetrics.average_precision(detections, truth) == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert detmetrics.average_precision(detections, {"a": truth["a"]}) is not None
    assert detmetrics.average_precision([], {"x": (torch.zeros(1, 4), torch.tensor([True]))}) is None
    # Recall exactly 0.3 reaches the 0.3 point.
    assert detmetrics.voc07_ap([True, True, True], 10) == pytest.approx(4 / 11)


def test_pointing_game_by_hand() -> None:
    heat = torch.zeros(100, 100)
    heat[50, 80] = 1.0                         # maximum at pixel centre (80.5, 50.5)
    assert detmetrics.pointing_hit(heat, (10, 10, 70, 60))       # 10.5 px right of the box
    assert not detmetrics.pointing_hit(heat, (10, 10, 60, 60))   # 20.5 px
    assert detmetrics.pointing_hit(heat, (0, 0, 70, 40))         # corner, 14.8 px away
    assert not detmetrics.pointing_hit(heat, (0, 0, 68, 38))     # corner, 17.7 px (not 12.5)
    assert not detmetrics.pointing_hit(torch.zeros(10, 10), (0, 0, 10, 10))


def test_energy_in_box_by_hand() -> None:
    heat = torch.full((10, 10), 0.5)
    heat[:5] = 1.0                             # total 50 + 25 = 75
    assert detmetrics.energy_in_box(heat, (0, 0, 10, 5)) == pytest.approx(50 / 75)
    assert detmetrics.energy_in_box(heat, (2.4, 0, 7.6, 5)) == pytest.approx(30 / 75)  # columns 2..7
    assert detmetrics.energy_in_box(torch.zeros(4, 4), (0, 0, 4, 4)) == 0.0


def test_voc_numbers_from_hand_made_detections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    def person_map(h: int, w: int) -> torch.Tensor:   # exactly on VOC person (11, 6)-(30, 40)
        heat = torch.zeros(h, w)
        heat[5:40, 10:30] = 1.0
        return heat

    def dog_map(h: int, w: int) -> torch.Tensor:      # peak far away, about half the mass in
        heat = torch.zeros(h, w)
        heat[20:50, 40:70] = 0.5                  # the dog box (41, 21)-(70, 50): mass 450
        heat[0:30, 0:30] = 0.5                    # elsewhere: mass 450 + 0.5
        heat[0, 0] = 1.0
        return heat

    def fake(model: object, image: torch.Tensor, target: det.DetectionTarget, layers: list[str],
             method: str = "gradcam", drise: object = None) -> det.DetectionResult:
        h, w = image.shape[-2:]
        if (h, w) == (60, 80):                    # 000001: a person and the difficult dog
            boxes = torch.tensor([[10., 5, 30, 40], [40, 20, 70, 50]])
            labels, scores = torch.tensor([PERSON, DOG]), torch.tensor([0.9, 0.8])
            maps = torch.stack([person_map(h, w), dog_map(h, w)])
        else:                                     # 000002: a person where there is none
            boxes, labels, scores = torch.tensor([[45., 0, 56, 10]]), torch.tensor([PERSON]), \
                torch.tensor([0.7])
            maps = torch.ones(1, h, w)
        return det.DetectionResult(boxes, labels, scores, torch.arange(len(boxes)),
                                   {layer: maps for layer in layers})

    monkeypatch.setattr(detmetrics, "explain", fake)
    tar = write_voc_tar(tmp_path / "voc.tar", ["000001", "000002"])
    args = main.build_parser().parse_args(["--det_vis", "--out_dir", str(tmp_path)])
    with voc.VOCReader(tar) as reader:
        hand_made = detectors.Detector(None, dict(enumerate(detectors.COCO_CLASSES)), voc.VOC_CLASSES,
                                 detectors.coco_to_voc(), 0.5, (800, 1333), voc.POINTING_TOLERANCE,
                                 "hand-made detections")
        assert cli_detect.detect_voc(args, hand_made, reader, ["layer4"], torch.device("cpu")) == 0
    report = json.loads((tmp_path / "detection" / "voc_metrics.json").read_text())
    # person: TP at 0.9, FP at 0.7, npos 2 -> precision 1 up to recall 1/2: 6 of 11 points.
    assert report["ap"]["person"] == pytest.approx(6 / 11)
    assert report["ap"]["dog"] is None and report["map"] == pytest.approx(6 / 11)
    assert report["explained_detections"] == 3 and report["matched_detections"] == 2
    dog_energy = 450 / 900.5
    layer = report["layers"]["layer4"]
    assert layer["pointing_game"] == pytest.approx(1 / 2)
    assert layer["energy_in_box"] == pytest.approx((1.0 + dog_energy) / 2)
    assert "person" in capsys.readouterr().out
