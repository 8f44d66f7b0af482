"""The same results on CUDA as on the CPU: explainers, evaluator and detector.

Skipped without CUDA (``scripts/gpu_check.sh`` runs them on a GPU machine). The CPU in fp32 is
the reference. Tolerances, stated once here:

* fp32 (TF32 switched off for the comparison, since PyTorch lets cuDNN convolutions use TF32
  by default): heatmaps within ``FP32_MAP_ATOL`` of the CPU's, per pixel; deletion/insertion
  AUCs within ``FP32_AUC_ATOL``; detector boxes within ``FP32_BOX_ATOL`` pixels, scores
  within ``FP32_SCORE_ATOL``, heatmaps within ``FP32_DET_MAP_ATOL`` (at 512x512, where a
  normalized map is more sensitive: see the detector test).
* the default autocast (bf16 on an H100, as on CPUs with native bf16): reduced precision moves
  a heatmap a little everywhere and some pixels a lot, so the mean absolute difference per map
  is compared, against ``max(AUTOCAST_MAP_MEAN_FLOOR, 3 x`` what bf16 autocast on the CPU
  moves it in the same test``)``; AUCs likewise against ``max(AUTOCAST_AUC_FLOOR, 3 x`` the
  CPU's bf16 error``)``. The detector runs in fp32 in the CLI (``--precision`` does not apply
  to it), so its fp32 comparison is its default one.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import detection as det
import detectors
from data import normalize
from evaluate import deletion_insertion
from explain import explain_batched, make_explainer
from registry import LAYER_METHODS
from runtime import autocast
from sources import dataset_split
from zoo import load_classifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROOT = Path(__file__).resolve().parent.parent
FP32_MAP_ATOL = 2e-3
FP32_AUC_ATOL = 1e-4
FP32_BOX_ATOL = 0.05
FP32_SCORE_ATOL = 1e-4
FP32_DET_MAP_ATOL = 0.02
AUTOCAST_MAP_MEAN_FLOOR = 0.02
AUTOCAST_AUC_FLOOR = 0.01
LOW = torch.bfloat16


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def shipped():
    """The shipped Fashion-MNIST model on both devices and six real test images."""
    path = ROOT / "checkpoints" / "resnet18_fashion_mnist.pth"
    loaded = load_classifier(weights=path)
    cpu, gpu = loaded.module, load_classifier(weights=path, device="cuda").module
    split = dataset_split(loaded, ROOT / "data")
    info = split.info
    pixels = split.images[:6].float().div(255)
    return cpu, gpu, info, pixels, split.labels[:6]


def _maps(model, name, pixels, labels, info, device, dtype):
    explainer = make_explainer(name, model, "layer4")
    images = normalize(pixels, info).to(device)
    with autocast(device, dtype):
        return explain_batched(explainer, images, labels.to(device), len(images)).float().cpu()


@pytest.mark.parametrize("name", LAYER_METHODS)   # on a CNN
def test_explainer_on_cuda_equals_cpu(shipped, name):
    cpu, gpu, info, pixels, labels = shipped
    reference = _maps(cpu, name, pixels, labels, info, torch.device("cpu"), None)
    with no_tf32():
        fp32 = _maps(gpu, name, pixels, labels, info, torch.device("cuda"), None)
    torch.testing.assert_close(fp32, reference, rtol=0, atol=FP32_MAP_ATOL)

    cpu_low = _maps(cpu, name, pixels, labels, info, torch.device("cpu"), LOW)
    gpu_low = _maps(gpu, name, pixels, labels, info, torch.device("cuda"), LOW)
    allowed = max(AUTOCAST_MAP_MEAN_FLOOR, 3 * (cpu_low - reference).abs().mean().item())
    assert (gpu_low - reference).abs().mean().item() <= allowed


@pytest.mark.parametrize("strategy", ["zero", "blur"])
def test_evaluator_on_cuda_equals_cpu(shipped, strategy):
    cpu, gpu, info, pixels, labels = shipped
    heatmaps = _maps(cpu, "gradcam", pixels, labels, info, torch.device("cpu"), None)

    def aucs(model, device, dtype):
        curves = deletion_insertion(model, pixels.to(device), heatmaps.to(device),
                                    labels.to(device), info, strategy, 20, 64, dtype)
        return torch.stack([curves.deletion_auc, curves.insertion_auc])

    reference = aucs(cpu, torch.device("cpu"), None)
    with no_tf32():
        torch.testing.assert_close(aucs(gpu, torch.device("cuda"), None), reference,
                                   rtol=0, atol=FP32_AUC_ATOL)
    cpu_error = (aucs(cpu, torch.device("cpu"), LOW) - reference).abs().max().item()
    gpu_error = (aucs(gpu, torch.device("cuda"), LOW) - reference).abs().max().item()
    assert gpu_error <= max(AUTOCAST_AUC_FLOOR, 3 * cpu_error)


def test_detector_on_cuda_equals_cpu():
    """A random-weight detector on a real photo: the 8 explained (top-scoring) detections, their
    boxes, scores and per-layer heatmaps. On the CPU, noise of 1e-6 on the image moves these
    boxes by 1e-3 px, scores by 1e-5 and maps by 4e-3: the tolerances leave room above that."""
    torch.manual_seed(0)
    model = detectors.build_detector(min_size=192, score_thresh=0.0)
    image = det.to_tensor(det.read_image(ROOT / "data" / "samples" / "astronaut.jpg"), "cpu")
    layers = ("layer3", "layer4")
    ref = det.explain_detections(model, image, layers, 0.0, 8)
    with no_tf32():
        gpu = det.explain_detections(model.cuda(), image.cuda(), layers, 0.0, 8)
    mine, theirs = ref.explained, gpu.explained
    assert torch.equal(gpu.labels[theirs], ref.labels[mine])
    torch.testing.assert_close(gpu.boxes[theirs], ref.boxes[mine], rtol=0, atol=FP32_BOX_ATOL)
    torch.testing.assert_close(gpu.scores[theirs], ref.scores[mine], rtol=0,
                               atol=FP32_SCORE_ATOL)
    for layer in layers:
        for rank in range(len(mine)):
            torch.testing.assert_close(gpu.heatmap(layer, rank), ref.heatmap(layer, rank),
                                       rtol=0, atol=FP32_DET_MAP_ATOL)
