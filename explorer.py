"""The explorer: the API behind a local web page (``python main.py --serve``).

The models are loaded once; a standard-library HTTP server answers the page
(``explorer.html``: nothing from anywhere else) and a JSON API: ``POST /api/open`` (an upload,
decoded by ``data.open_image``, or a sample; top-5 at once), ``POST /api/explain`` /
``/api/curves`` / ``/api/detect`` (a task in its own thread, one computation at a time),
``GET /api/task/ID`` (long poll: answered the moment the task is done; progress counted in
forward passes), ``POST /api/task/ID/cancel`` (stops at the next module called) and
``GET /api/file/ID/NAME`` (shown JPEG, PNG and ``.npy``). The maps are the API's own:
``explain.heatmaps``, ``evaluate.deletion_insertion`` with the random baseline,
``detection.explain_detections``, called as the command line calls them.

Images and results live in memory under random ids that only the tab that made them knows,
so two tabs never mix; the oldest are forgotten. Nothing is written to disk.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import io
import ipaddress
import json
import logging
import math
import queue
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import cv2
import numpy as np
import torch
from PIL import Image

import visualize
from data import open_image
from errors import UserError
from registry import DET_METHODS, DET_TITLES, TITLES

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("explorer.html")
MAX_UPLOAD = 64 * 2**20        # bytes of one upload
MIN_SIDE = 8                   # pixels: a smaller image has nothing to explain
VIEW_SIDE = 320                # the page's panels (the PNG download is the CLI's, 512)
KEPT = 48                      # images and tasks kept in memory (the oldest go first)
CURVE_STEPS = 50               # points per deletion / insertion curve minus one
WAIT = 10.0                    # seconds a task poll waits before answering "still running"


class Cancelled(Exception): ...   # the user cancelled the task


@dataclass
class Picture:
    """One opened image and what the models made of it (cached per image)."""

    name: str
    photo: Image.Image
    pixels: torch.Tensor | None = None      # the classifier's [3, S, S] in [0, 1]
    display: torch.Tensor | None = None     # the photo for panels [3, h, w] (None: pixels)
    view: torch.Tensor | None = None        # a smaller copy for the page's panels
    probs: torch.Tensor | None = None       # [C]
    array: np.ndarray | None = None         # the detector's RGB uint8 input


@dataclass
class Task:
    """A piece of work on one picture: its state, progress and the files it made."""

    kind: str
    state: str = "running"                  # running, done, error, cancelled
    message: str = ""
    done_passes: int = 0
    passes: int = 1
    result: dict = field(default_factory=dict)
    # name -> (file name for a download, bytes or a function making them on first request)
    files: dict[str, tuple[str, bytes | Callable[[], bytes]]] = field(default_factory=dict)
    detection: tuple | None = None          # (DetectionResult, Picture) of a detect task
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)

    def status(self) -> dict:
        progress = min(0.99, self.done_passes / max(1, self.passes))
        return {"state": self.state, "message": self.message, "kind": self.kind,
                "progress": 1.0 if self.state == "done" else progress,
                "seconds": round(time.perf_counter() - self.started, 2),
                **({"result": self.result} if self.state == "done" else {})}


class Store(OrderedDict):
    """A dict that forgets its oldest entries beyond ``KEPT``."""

    def put(self, value: Any) -> str:
        key = secrets.token_urlsafe(12)
        self[key] = value
        while len(self) > KEPT:
            self.popitem(last=False)
        return key


def encode(image_rgb: np.ndarray, suffix: str) -> bytes:
    """An RGB uint8 array as ``.png`` bytes (downloads: lossless) or ``.jpg`` (what the page
    shows: several times faster to encode than a PNG of a photo-sized panel, and smaller)."""
    option = ([cv2.IMWRITE_PNG_COMPRESSION, 1] if suffix == ".png"
              else [cv2.IMWRITE_JPEG_QUALITY, 92])
    return cv2.imencode(suffix, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), option)[1].tobytes()


png, jpeg = functools.partial(encode, suffix=".png"), functools.partial(encode, suffix=".jpg")


def data_url(jpeg_bytes: bytes) -> str:
    """A picture inside the answer: one round trip less between a click and the picture."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes).decode()


def npy(array: torch.Tensor) -> bytes:
    out = io.BytesIO()
    np.save(out, array.numpy())
    return out.getvalue()


class Explorer:
    """The models and the state behind the page. ``classifier`` is a ``zoo.LoadedModel``,
    ``detector`` a ``detectors.Detector`` (either may be None); ``samples`` maps a name to a
    function returning the image file's bytes and, for a test image of the classifier's
    dataset, its pixels as the test split holds them (else None)."""

    def __init__(self, classifier, detector, device: torch.device,
                 samples: dict[str, Callable[[], tuple[bytes, torch.Tensor | None]]],
                 cam_batch_size: int = 256, det_score_thresh: float | None = None,
                 det_max: int = 20, det_masks: int = 1000, seed: int = 0):
        self.classifier, self.detector, self.device = classifier, detector, device
        self.samples = samples
        self.cam_batch_size = cam_batch_size
        self.det_score_thresh = det_score_thresh
        self.det_max, self.det_masks, self.seed = det_max, det_masks, seed
        self.pictures: Store = Store()
        self.tasks: Store = Store()
        self.lock = threading.Lock()          # the stores
        self.work = threading.Lock()          # one computation at a time
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._worker, daemon=True, name="explorer-worker").start()
        self._layers: list[dict] | None = None
        self._channels: dict[str, int] = {}
        self._methods: list[str] | None = None


    def layers(self) -> list[dict]:
        """The classifier's layers with a spatial map, ``auto`` first (``--list_layers``)."""
        if self._layers is None:
            from cam import spatial_layers
            rows = spatial_layers(self.classifier.module, self.classifier.input_size)
            self._layers = [{"name": "auto", "text": f"auto ({self.classifier.default_layer})"}]
            self._layers += [{"name": n, "text": f"{n}  {k}x{h}x{w}"} for n, (k, h, w) in rows]
            self._channels = {n: k for n, (k, _, _) in rows}
        return self._layers

    def methods(self) -> list[str]:
        """The classifier's methods: every one that applies to it (rollout: a ViT's only)."""
        if self._methods is None:
            from explain import model_methods
            self._methods = model_methods(self.classifier.module, "all")
        return self._methods

    def info(self) -> dict:
        out: dict[str, Any] = {"samples": list(self.samples)}
        if self.classifier is not None:
            c = self.classifier
            out["classifier"] = {
                "description": c.description, "classes": list(c.classes), "layers": self.layers(),
                "methods": [{"name": m, "title": TITLES[m]} for m in self.methods()]}
        if self.detector is not None:
            from detection import backbone_layers, default_layer
            model = self.detector.model
            out["detector"] = {
                "description": self.detector.description, "layers": list(backbone_layers(model)),
                "default_layer": default_layer(model),
                "methods": [{"name": m, "title": DET_TITLES[m]} for m in DET_METHODS]}
        return out


    def open(self, data: bytes | None, name: str, sample: str | None = None) -> dict:
        """Decode an upload (or open a sample) and classify it; a bad image is a UserError."""
        pixels = None
        if sample is not None:
            if sample not in self.samples:
                raise UserError(f"no sample called {sample!r}")
            data, pixels = self.samples[sample]()
            name = sample
        if not data:
            raise UserError(f"{name}: the file is empty")
        photo = open_image(io.BytesIO(data), name)
        if min(photo.size) < MIN_SIDE:
            raise UserError(f"image {name} is {photo.size[0]} x {photo.size[1]} pixels: too "
                            f"small to explain (at least {MIN_SIDE} pixels a side)")
        picture = Picture(name, photo)
        out = {"name": name, "width": photo.size[0], "height": photo.size[1]}
        if self.classifier is not None:
            from explain import probabilities
            prep = self.classifier.inputs
            picture.pixels = pixels if pixels is not None else prep.pixels(photo)
            if pixels is None:   # a photo's panel shows it at its own aspect ratio
                from folders import load_photo
                picture.display = load_photo(io.BytesIO(data), max_side=512)   # as the CLI
                picture.view = load_photo(io.BytesIO(data), max_side=VIEW_SIDE)
            with self.work:
                picture.probs = probabilities(self.classifier.module,
                                              prep.normalize(picture.pixels)[None]
                                              .to(self.device), 1)[0].cpu()
            top = picture.probs.topk(min(5, len(picture.probs)))
            out["top5"] = [{"index": int(i), "name": self.classifier.classes[int(i)],
                            "p": float(v)} for v, i in zip(top.values, top.indices)]
        with self.lock:
            out["id"] = self.pictures.put(picture)
        return out

    def picture(self, key: str) -> Picture:
        with self.lock:
            picture = self.pictures.get(key)
        if picture is None:
            raise UserError("this image is no longer open here: open it again")
        return picture


    def start(self, kind: str, work: Callable[[Task], None], passes: int) -> str:
        """Queue ``work(task)`` for the worker thread; the task's id."""
        task = Task(kind, passes=max(1, passes))
        with self.lock:
            key = self.tasks.put(task)
        self.queue.put((task, work))
        return key

    def _worker(self) -> None:
        """Run the queued tasks one at a time, in one long-lived thread (a new thread per task
        would pay PyTorch's thread-pool start-up on every click)."""
        while True:
            task, work = self.queue.get()
            try:
                if task.cancel.is_set():
                    raise Cancelled
                with self.work, self._counting(task):
                    work(task)
                task.state = "done"
            except Cancelled:
                task.state, task.message = "cancelled", "cancelled"
            except UserError as exc:
                task.state, task.message = "error", str(exc)
            except Exception as exc:   # a bug: the page says so, the server keeps serving
                log.exception("task %s failed", task.kind)
                task.state, task.message = "error", f"internal error: {exc!r}"
            finally:
                task.finished.set()

    @contextlib.contextmanager
    def _counting(self, task: Task) -> Iterator[None]:
        """Count forward passes for the progress bar, and stop at the next module called when
        the task is cancelled (the explainers remove their own hooks on the way out). The hook
        is global while the task runs: Score-CAM and deletion / insertion run a folded copy of
        the model (``runtime.inference_copy``), which counts as the model."""
        from torch.fx import GraphModule
        roots = {id(m) for m in (getattr(self.classifier, "module", None),
                                 getattr(getattr(self.detector, "model", None), "backbone", None))
                 if m is not None}

        def count(module: torch.nn.Module, inputs: tuple) -> None:
            if task.cancel.is_set():
                raise Cancelled
            if id(module) in roots or isinstance(module, GraphModule):
                task.done_passes += 1

        handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
        try:
            yield
        finally:
            handle.remove()

    def task(self, key: str) -> Task:
        with self.lock:
            task = self.tasks.get(key)
        if task is None:
            raise UserError("no such task here (it may have been forgotten: run it again)")
        return task


    def _target(self, picture: Picture, target: str | int | None) -> int:
        if target in (None, "", "pred"):
            return int(picture.probs.argmax())
        return self.classifier.class_index(target)

    def _passes(self, method: str, layer: str) -> int:
        """Forward passes ``method`` takes for one image, for the progress bar."""
        if method not in ("scorecam", "ablationcam"):
            return 2
        self.layers()
        return math.ceil(self._channels.get(layer, 512) / self.cam_batch_size) + 2

    def explain(self, key: str, methods: list[str], layer: str = "auto",
                target: str | int | None = None) -> str:
        """Heatmaps of the picture by every method: the API's ``explain.heatmaps``."""
        from explain import heatmaps
        if self.classifier is None:
            raise UserError("no classifier loaded")
        unknown = [m for m in methods if m not in self.methods()]
        if unknown or not methods:
            raise UserError(f"choose one or more methods of {', '.join(self.methods())}")
        picture = self.picture(key)
        loaded = self.classifier
        layer_name = loaded.layer(layer)
        index = self._target(picture, target)

        def work(task: Task) -> None:
            images = loaded.inputs.normalize(picture.pixels)[None].to(self.device)
            targets = torch.tensor([index], device=self.device)
            maps = []
            for method in methods:
                heat = heatmaps(loaded.module, images, targets, method, layer_name, 1,
                                self.cam_batch_size)[0].cpu()
                stem = f"{visualize.slug(Path(picture.name).stem)}_{method}_{layer_name}"
                view = jpeg(self._panel(picture, heat, picture.view))
                task.files[f"{method}.jpg"] = (f"{stem}.jpg", view)
                task.files[f"{method}.png"] = (f"{stem}.png", lambda heat=heat: png(
                    self._panel(picture, heat, picture.display)))
                task.files[f"{method}.npy"] = (f"{stem}.npy", npy(heat))
                maps.append({"method": method, "title": TITLES[method], "view": data_url(view),
                             "png": f"{method}.png", "npy": f"{method}.npy"})
            task.result = {"maps": maps, "layer": layer_name, "target": index,
                           "target_name": loaded.classes[index]}

        return self.start("explain", work, sum(self._passes(m, layer_name) for m in methods))

    def _panel(self, picture: Picture, heat: torch.Tensor, shown: torch.Tensor | None
               ) -> np.ndarray:
        """``original | overlay`` as the command line draws it: a photo ``shown`` at its own
        aspect ratio with the map over the region the model saw; a test image enlarged."""
        if shown is None:
            return visualize.heatmap_panel(picture.pixels, heat)
        return visualize.photo_panel(shown, heat, self.classifier.inputs, picture.photo.size)

    def curves(self, key: str, methods: list[str], layer: str = "auto",
               target: str | int | None = None, strategy: str = "zero") -> str:
        """This image's deletion and insertion curves (and AUCs) of every method and of the
        random baseline: ``evaluate.deletion_insertion`` on the API's maps."""
        from evaluate import RandomHeatmap, auc, deletion_insertion
        from explain import heatmaps
        picture = self.picture(key)
        loaded = self.classifier
        layer_name = loaded.layer(layer)
        index = self._target(picture, target)

        def work(task: Task) -> None:
            pixels = picture.pixels[None].to(self.device)
            images = loaded.inputs.normalize(pixels)
            targets = torch.tensor([index], device=self.device)
            series = []
            for method in [*methods, "random"]:
                heat = (RandomHeatmap(self.seed)(images, targets) if method == "random" else
                        heatmaps(loaded.module, images, targets, method, layer_name, 1,
                                 self.cam_batch_size))
                c = deletion_insertion(loaded.module, pixels, heat, targets, loaded.inputs,
                                       strategy, CURVE_STEPS, 256)
                series.append({"method": method,
                               "title": TITLES.get(method, "Random (baseline)"),
                               "deletion": c.deletion[0].tolist(),
                               "insertion": c.insertion[0].tolist(),
                               "deletion_auc": float(auc(c.deletion[0].double())),
                               "insertion_auc": float(auc(c.insertion[0].double()))})
            task.result = {"series": series, "strategy": strategy, "steps": CURVE_STEPS}

        per_curve = math.ceil(2 * (CURVE_STEPS + 1) / 256)
        return self.start("curves", work, sum(self._passes(m, layer_name) + per_curve
                                              for m in methods) + per_curve)


    def detect(self, key: str, method: str = "gradcam", layers: list[str] | None = None) -> str:
        """Every detection and its maps at ``layers``: ``detection.explain_detections`` as
        ``--det_img`` calls it; the panels are drawn when the page asks for them."""
        from detection import (
            backbone_layers,
            default_layer,
            explain_detections,
            image_array,
            to_tensor,
        )
        from drise import DriseSettings
        if self.detector is None:
            raise UserError("no detector loaded")
        if method not in DET_METHODS:
            raise UserError(f"choose a method of {', '.join(DET_METHODS)}")
        det = self.detector
        if method == "drise":
            layers = ["input"]
        else:
            known = backbone_layers(det.model)
            layers = [x for x in (layers or [default_layer(det.model)]) if x in known]
            if not layers:
                raise UserError(f"choose one or more layers of {', '.join(known)}")
        picture = self.picture(key)
        if picture.array is None:
            picture.array = image_array(picture.photo, fit=det.input_fit)
        thresh = det.score_thresh if self.det_score_thresh is None else self.det_score_thresh
        drise = DriseSettings(masks=self.det_masks, seed=self.seed) if method == "drise" else None

        def work(task: Task) -> None:
            result = explain_detections(det.model, to_tensor(picture.array, self.device), layers,
                                        thresh, self.det_max, method=method, drise=drise)
            task.result = {
                "layers": layers, "method": method, "title": DET_TITLES[method],
                "width": int(picture.array.shape[1]), "height": int(picture.array.shape[0]),
                "detections": [{"rank": r, "label": det.names.get(int(result.labels[i]), "?"),
                                "score": float(result.scores[i]),
                                "box": [float(v) for v in result.boxes[i]]}
                               for r, i in enumerate(result.explained.tolist())]}
            task.files["image.jpg"] = ("image.jpg", jpeg(picture.array))
            task.detection = (result, picture)
            if len(result.explained):   # the first detection's maps come with the answer
                task.result["first"] = {layer: data_url(self.file(task, f"box_0_{layer}.jpg")[1])
                                        for layer in layers}

        passes = math.ceil(self.det_masks / DriseSettings().batch_size) + 1 if drise else 2
        return self.start("detect", work, passes)

    def file(self, task: Task, name: str) -> tuple[str, bytes]:
        """A task's file ``name``, made on first request where it is made lazily; for a
        detection task also ``box_R_LAYER.jpg`` / ``.png`` / ``.npy`` (one detection's map)
        and ``panels_LAYER.jpg`` / ``.png`` (the original GUI's original | heatmap |
        detections), drawn on first request."""
        if name not in task.files and task.kind == "detect":
            task.files[name] = self._detection_file(task, name)
        out, body = task.files[name]
        if callable(body):
            body = body()
            task.files[name] = (out, body)
        return out, body

    def _detection_file(self, task: Task, name: str) -> tuple[str, bytes]:
        result, picture = task.detection or (None, None)
        stem, _, suffix = name.rpartition(".")
        parts = stem.split("_", 2)
        if result is None or suffix not in ("jpg", "png", "npy") or parts[-1] not in result.maps:
            raise KeyError(name)
        names = self.detector.names
        base = visualize.slug(Path(picture.name).stem)
        encode = jpeg if suffix == "jpg" else png
        if parts[0] == "panels" and suffix != "npy":
            return (f"{base}_{result.method}_{parts[1]}.{suffix}",
                    encode(visualize.detection_panel(picture.array, result, parts[1], names)))
        if parts[0] == "box" and len(parts) == 3 and parts[1].isdigit() \
                and int(parts[1]) < len(result.explained):
            rank, layer = int(parts[1]), parts[2]
            out = f"{base}_{result.method}_{layer}_det{rank + 1}.{suffix}"
            return (out, npy(result.heatmap(layer, rank)) if suffix == "npy" else
                    encode(visualize.box_panel(picture.array, result, rank, layer, names)))
        raise KeyError(name)


# --------------------------------------------------------------------------------------------
# HTTP


class Handler(BaseHTTPRequestHandler):
    """The page and the JSON API of one :class:`Explorer` (``server.explorer``)."""

    protocol_version = "HTTP/1.1"      # keep-alive: no new connection per request

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK hold every answer back by up to 40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def app(self) -> Explorer:
        return self.server.explorer

    def log_message(self, format: str, *args: Any) -> None:   # quiet: the console is the user's
        log.debug(format, *args)

    def _send(self, status: int, body: bytes, kind: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        # The page may reach this server only: no other origin for anything.
        self.send_header("Content-Security-Policy", "default-src 'self' data: blob:; "
                         "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _error(self, message: str, status: int = 400) -> None:   # shown in the page
        self._json({"error": message}, status)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD:
            self.close_connection = True
            raise UserError(f"the file is {length / 2**20:.0f} MB; the explorer takes up to "
                            f"{MAX_UPLOAD // 2**20} MB")
        return self.rfile.read(length)

    def _guarded(self, handle: Callable[[], None]) -> None:
        try:
            handle()
        except UserError as exc:
            self._error(str(exc))
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
            self._error(f"bad request: {exc}", 404 if isinstance(exc, KeyError) else 400)
        except (BrokenPipeError, ConnectionResetError):   # the tab went away
            self.close_connection = True
        except Exception as exc:   # a bug: said in the page, the server keeps serving
            log.exception("request %s failed", self.path)
            self._error(f"internal error: {exc!r}", 500)

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _get(self) -> None:
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if url.path in ("/", "/index.html"):
            self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif url.path == "/api/info":
            self._json(self.app.info())
        elif parts[:2] == ["api", "task"] and len(parts) == 3:
            task = self.app.task(parts[2])
            wait = float(parse_qs(url.query).get("wait", ["0"])[0] or 0)
            task.finished.wait(min(max(wait, 0.0), WAIT))
            self._json(task.status())
        elif parts[:2] == ["api", "file"] and len(parts) == 4:
            task = self.app.task(parts[2])
            name, body = self.app.file(task, parts[3])
            kind = {"png": "image/png", "jpg": "image/jpeg"}.get(name.rpartition(".")[2],
                                                                 "application/octet-stream")
            how = "attachment" if parse_qs(url.query).get("dl") else "inline"
            self._send(200, body, kind, {"Content-Disposition": f'{how}; filename="{name}"'})
        elif parts[:2] == ["api", "sample"] and len(parts) == 3:
            data, _ = self.app.samples[parts[2]]()
            photo = open_image(io.BytesIO(data), parts[2]).convert("RGB")
            photo.thumbnail((96, 96))
            self._send(200, png(np.asarray(photo)), "image/png")
        else:
            self._error("not found", 404)

    def _post(self) -> None:
        path = urlparse(self.path).path
        app = self.app
        if path == "/api/open":
            if self.headers.get("Content-Type", "").startswith("application/json"):
                self._json(app.open(None, "", json.loads(self._body())["sample"]))
            else:
                name = unquote(self.headers.get("X-Name", "upload"))[:200]
                self._json(app.open(self._body(), name))
            return
        if path.startswith("/api/task/") and path.endswith("/cancel"):
            app.task(path.split("/")[3]).cancel.set()
            self._json({"ok": True})
            return
        ask = json.loads(self._body() or b"{}")
        if path == "/api/explain":
            key = app.explain(ask["image"], ask["methods"], ask.get("layer", "auto"),
                              ask.get("target"))
        elif path == "/api/curves":
            key = app.curves(ask["image"], ask["methods"], ask.get("layer", "auto"),
                             ask.get("target"), ask.get("strategy", "zero"))
        elif path == "/api/detect":
            key = app.detect(ask["image"], ask.get("method", "gradcam"), ask.get("layers"))
        else:
            self._error("not found", 404)
            return
        task = app.task(key)
        task.finished.wait(float(ask.get("wait", 0)))   # quick work answers in one round trip
        self._json({"task": key, **task.status()})


def _family(host: str, port: int) -> socket.AddressFamily:
    """IPv4 or IPv6: read from an address, asked of the resolver only for a name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 7860
                ) -> ThreadingHTTPServer:
    """The HTTP server of ``explorer`` bound to ``host:port`` (port 0: any free one), an IPv4
    or IPv6 address or a name, its address to open in ``url``; a port in use or a host that
    is not this machine's is a UserError."""
    try:
        family = _family(host, port)
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family})
        server = server_class((host, port), Handler)
    except (OSError, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise UserError(f"cannot listen on {host}:{port}: {why}") from None
    server.daemon_threads, server.explorer = True, explorer
    host, port = server.server_address[:2]    # the address to open (port 0: the one chosen)
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    server.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    return server
