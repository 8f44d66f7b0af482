"""The explorer job of the command line (``--serve``): load the models the flags name, once,
and serve ``explorer.py``'s page on ``--host:--port`` until Ctrl-C.

By default the classifier is the one ``--mode test`` would test (the shipped Fashion-MNIST
model) and the detector the shipped scene detector; ``--arch`` / ``--weights`` / ``--model``
and ``--det_arch`` / ``--det_weights`` name others, as in every other job.
"""
from __future__ import annotations

import copy
import functools
import io
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from registry import DEFAULT_DET_ARCH
from runtime import resolve_device

ROOT = Path(__file__).resolve().parent
SHIPPED_DETECTOR = ROOT / "checkpoints" / "fasterrcnn_fashion_scenes.pth"
SAMPLES = ROOT / "data" / "samples"
SCENES = ROOT / "data" / "fashion_scenes" / "JPEGImages"
SHOWN_SCENES = 6
SHOWN_TEST_IMAGES = 8


def _detector(args: Namespace, device: torch.device):
    """The detector the flags name; without ``--det_weights`` / ``--det_arch`` the shipped
    scene detector (None where it is not there)."""
    from cli_detect import _load_detector
    if args.det_weights is None and args.det_arch == DEFAULT_DET_ARCH:
        if not SHIPPED_DETECTOR.is_file():
            return None
        args = copy.copy(args)
        args.det_weights = str(SHIPPED_DETECTOR)
    return _load_detector(args, device)


def samples(classifier, data_dir: str) -> dict[str, Callable[[], tuple[bytes, torch.Tensor | None]]]:
    """The images offered in the page: the shipped photos and scenes, and the first test
    images of the classifier's built-in dataset (decoded when first asked for)."""
    samples: dict[str, Callable[[], tuple[bytes, torch.Tensor | None]]] = {}
    for path in [*sorted(SAMPLES.glob("*.jpg")), *sorted(SCENES.glob("*.png"))[:SHOWN_SCENES]]:
        samples[path.name] = lambda path=path: (path.read_bytes(), None)
    if classifier is not None and classifier.dataset is not None:
        import sources

        @functools.lru_cache(maxsize=1)
        def split():
            return sources.dataset_split(classifier, data_dir)

        def test_image(i: int) -> tuple[bytes, torch.Tensor]:
            pixels = split().images[i]
            out = io.BytesIO()
            Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(out, format="PNG")
            return out.getvalue(), pixels.float().div(255)   # as explain_split takes them

        for i in range(SHOWN_TEST_IMAGES):
            samples[f"test_{i}.png"] = functools.partial(test_image, i)
    return samples


def serve(args: Namespace) -> int:
    """``--serve``: the explorer on ``--host:--port``; its address is printed."""
    import explorer
    from cli_classify import load
    device = resolve_device(args.device)
    classifier = load(args, device)
    detector = _detector(args, device)
    app = explorer.Explorer(classifier, detector, device, samples(classifier, args.data_dir),
                            args.cam_batch_size, args.det_score_thresh, args.det_max,
                            args.det_masks, args.seed)
    server = explorer.make_server(app, args.host, args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}: anyone who can reach this machine can use the "
              f"explorer (the default 127.0.0.1 keeps it to this machine)")
    print(f"Explorer: open {server.url} in a browser (Ctrl-C stops it)",
          flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("Explorer stopped")
    finally:
        server.server_close()
    return 0

