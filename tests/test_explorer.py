"""The explorer (``--serve``): its maps are the API's, bad uploads are messages, tasks cancel,
tabs never mix; and the page in headless Chromium (tests/browser.py), offline."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import cli_serve
import explorer
from data import open_image
from errors import UserError
from tests.browser import needs_browser, open_browser
from tests.cli import _NO_NETWORK, ROOT

PHOTO = ROOT / "data" / "samples" / "coffee.jpg"
SCENE = ROOT / "data" / "fashion_scenes" / "JPEGImages" / "000001.png"


@pytest.fixture(scope="module")
def app():
    from detectors import load_detector
    from recipes import SHIPPED_CLASSIFIER
    from zoo import load_classifier
    device = torch.device("cpu")
    classifier = load_classifier(None, str(ROOT / SHIPPED_CLASSIFIER), device=device)
    detector = load_detector(str(cli_serve.SHIPPED_DETECTOR), device)
    return explorer.Explorer(classifier, detector, device,
                             cli_serve.samples(classifier, str(ROOT / "data")))


@pytest.fixture(scope="module")
def server(app):
    server = explorer.make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server.url
    server.shutdown()
    server.server_close()


def call(url: str, body: bytes | dict | None = None, headers: dict | None = None):
    """``(status, JSON or bytes)`` of a GET, or a POST of ``body``."""
    if isinstance(body, dict):
        body, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            status, data, kind = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, data, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    return status, json.loads(data) if kind.startswith("application/json") else data


def upload(server: str, data: bytes, name: str = "photo.jpg"):
    return call(server + "api/open", data, {"Content-Type": "application/octet-stream",
                                            "X-Name": name})


def finished(server: str, path: str, ask: dict) -> dict:
    status, out = call(server + path, {**ask, "wait": 30})
    assert status == 200, out
    while out["state"] == "running":
        out = call(f"{server}api/task/{out['task']}?wait=5")[1] | {"task": out["task"]}
    assert out["state"] == "done", out
    return out


def api_map(app, path: Path, method: str, layer: str) -> torch.Tensor:
    """The API's map of a photo for its predicted class, as ``--image`` computes it."""
    from explain import heatmaps, probabilities
    loaded = app.classifier
    images = loaded.inputs(open_image(path))[None]
    target = probabilities(loaded.module, images, 1).argmax(1)
    return heatmaps(loaded.module, images, target, method, layer)[0]


def test_the_methods_offered_are_the_models(app):
    """A CNN is offered every layer method and not rollout, which reads a ViT's attention."""
    from registry import LAYER_METHODS
    offered = [m["name"] for m in app.info()["classifier"]["methods"]]
    assert offered == list(LAYER_METHODS) and "rollout" not in offered
    with pytest.raises(UserError, match="choose one or more methods"):
        app.explain("any", ["rollout"])


@pytest.mark.skipif(not socket.has_ipv6, reason="this Python has no IPv6")
def test_an_ipv6_host_is_served_and_its_address_has_brackets(app):
    try:
        server = explorer.make_server(app, "::1", 0)
    except UserError as exc:      # a machine with IPv6 switched off in its kernel
        pytest.skip(str(exc))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    try:
        assert server.url.startswith("http://[::1]:")
        status, info = call(server.url + "api/info")
        assert status == 200 and info["classifier"]
    finally:
        server.shutdown()
        server.server_close()


def test_a_host_that_is_not_this_machine_is_one_user_error(app):
    with pytest.raises(UserError, match="cannot listen on no.such.host.invalid"):
        explorer.make_server(app, "no.such.host.invalid", 0)


def test_maps_are_the_apis(app, server):
    """The downloaded .npy of each method is the API's map, bit for bit."""
    status, opened = upload(server, PHOTO.read_bytes())
    assert status == 200 and len(opened["top5"]) == 5
    out = finished(server, "api/explain", {"image": opened["id"], "layer": "layer3",
                                           "methods": ["gradcam", "layercam"]})
    for method in ("gradcam", "layercam"):
        status, data = call(f"{server}api/file/{out['task']}/{method}.npy")
        assert status == 200
        assert np.array_equal(np.load(io.BytesIO(data)), api_map(app, PHOTO, method,
                                                                 "layer3").numpy())
        status, png = call(f"{server}api/file/{out['task']}/{method}.png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_have_aucs_and_the_random_baseline(server):
    opened = call(server + "api/open", {"sample": "test_0.png"})[1]
    out = finished(server, "api/curves", {"image": opened["id"], "methods": ["gradcam"]})
    series = {s["method"]: s for s in out["result"]["series"]}
    assert set(series) == {"gradcam", "random"}
    for s in series.values():
        assert len(s["deletion"]) == explorer.CURVE_STEPS + 1
        assert 0 <= s["deletion_auc"] <= 1 and 0 <= s["insertion_auc"] <= 1


def test_detection_maps_are_the_apis(app, server):
    from detection import explain_detections, image_array, to_tensor
    opened = call(server + "api/open", {"sample": SCENE.name})[1]
    out = finished(server, "api/detect", {"image": opened["id"], "method": "layercam",
                                          "layers": ["layer3", "layer4"]})
    detections = out["result"]["detections"]
    assert detections
    det = app.detector
    expected = explain_detections(det.model, to_tensor(image_array(open_image(SCENE),
                                                                   det.input_fit), "cpu"),
                                  ["layer3", "layer4"], det.score_thresh, 20, method="layercam")
    rank = len(detections) - 1
    data = call(f"{server}api/file/{out['task']}/box_{rank}_layer4.npy")[1]
    assert np.array_equal(np.load(io.BytesIO(data)), expected.heatmap("layer4", rank).numpy())
    for name in (f"box_{rank}_layer3.png", "panels_layer4.png"):
        assert call(f"{server}api/file/{out['task']}/{name}")[1][:4] == b"\x89PNG"
    for name in (f"box_{rank}_layer3.jpg", "panels_layer4.jpg", "image.jpg"):   # shown
        assert call(f"{server}api/file/{out['task']}/{name}")[1][:2] == b"\xff\xd8"
    assert call(f"{server}api/file/{out['task']}/box_99_layer4.png")[0] == 404


def huge_png(side: int = 30000) -> bytes:
    """A PNG header that claims ``side`` x ``side`` pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0,
                                                               0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def one_pixel_png() -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (1, 1)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("data, words", [
    (b"this is not an image", "cannot read image"),
    (PHOTO.read_bytes()[:2000], "cannot read image"),
    (huge_png(), "cannot read image"),
    (one_pixel_png(), "too small"),
    (b"", "empty"),
], ids=["not-an-image", "truncated", "30000-pixels", "one-pixel", "empty"])
def test_bad_uploads_are_messages(server, data, words):
    status, out = upload(server, data, "bad.png")
    assert status == 400 and words in out["error"], out
    assert upload(server, PHOTO.read_bytes())[0] == 200   # and the server keeps serving


def test_cancel_stops_at_the_next_pass_and_leaves_the_model_clean(app, server):
    """Score-CAM one channel per pass: hundreds of passes, cancelled after the first ones."""
    opened = upload(server, PHOTO.read_bytes())[1]
    app.cam_batch_size = 1
    try:
        out = call(server + "api/explain", {"image": opened["id"], "methods": ["scorecam"],
                                            "wait": 0})[1]
        key = out["task"]
        while out["state"] == "running" and out["progress"] < 0.01:
            time.sleep(0.02)
            out = call(f"{server}api/task/{key}")[1]
        call(f"{server}api/task/{key}/cancel", {})
        while out["state"] == "running":
            out = call(f"{server}api/task/{key}?wait=5")[1]
        assert out["state"] == "cancelled"
    finally:
        app.cam_batch_size = 256
    module = app.classifier.module
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in module.modules())
    assert not torch.nn.modules.module._global_forward_pre_hooks
    assert finished(server, "api/explain", {"image": opened["id"], "methods": ["gradcam"]})


def test_two_tabs_never_mix(app, server):
    """Two images explained at once: each answer is its own image's map."""
    scene = call(server + "api/open", {"sample": SCENE.name})[1]
    photo = upload(server, PHOTO.read_bytes())[1]
    assert scene["id"] != photo["id"]
    answers = {}

    def tab(name, opened):
        out = finished(server, "api/explain", {"image": opened["id"], "methods": ["gradcam"],
                                               "layer": "layer4"})
        answers[name] = np.load(io.BytesIO(call(f"{server}api/file/{out['task']}/"
                                                f"gradcam.npy")[1]))

    threads = [threading.Thread(target=tab, args=a) for a in (("scene", scene),
                                                              ("photo", photo))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, path in (("scene", SCENE), ("photo", PHOTO)):
        assert np.array_equal(answers[name], api_map(app, path, "gradcam", "layer4").numpy())
    assert call(f"{server}api/task/not-a-task")[0] == 400


def test_serve_command(tmp_path):
    """``python main.py --serve --port 0`` offline: prints the address, serves the page and
    its API, stops on SIGTERM with status 0, and writes nothing."""
    out_dir = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-c", _NO_NETWORK.format(root=str(ROOT)), "--serve", "--port", "0",
         "--out_dir", str(out_dir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        address = None
        for line in process.stdout:
            if line.startswith("Explorer: open "):
                address = line.split()[2]
                break
        assert address and address.startswith("http://127.0.0.1:")
        assert b"CAM explorer" in call(address)[1]
        info = call(address + "api/info")[1]
        assert info["classifier"]["layers"][0]["name"] == "auto"
        assert {m["name"] for m in info["detector"]["methods"]} >= {"gradcam", "layercam",
                                                                     "drise"}
    finally:
        process.send_signal(signal.SIGTERM)
        rest, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Explorer stopped" in rest
    assert not out_dir.exists()


# --------------------------------------------------------------------------------------------
# In the browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    yield from open_browser(tmp_path_factory)


def _wait(browser, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(browser.driver, timeout, poll_frequency=0.05).until(condition)


def _open_page(browser, server):
    from selenium.webdriver.common.by import By
    browser.driver.get(server)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#samples img"))


def _upload(browser, path: Path, opens: bool = True):
    """Upload ``path`` through the page's file input; wait until it is open (``opens``) or
    until the page shows an error."""
    from selenium.webdriver.common.by import By
    browser.driver.find_element(By.ID, "file").send_keys(str(path))
    if opens:
        _wait(browser, lambda d: d.find_element(By.ID, "current").text.startswith(path.name))
    else:
        _wait(browser, lambda d: not d.find_element(By.ID, "err").get_attribute("hidden"))


@needs_browser
def test_page_explains_an_upload_and_its_download_is_the_apis_map(app, server, browser):
    from selenium.webdriver.common.by import By
    _open_page(browser, server)
    d = browser.driver
    _upload(browser, PHOTO)
    assert d.find_element(By.ID, "err").get_attribute("hidden")
    assert len(d.find_elements(By.CSS_SELECTOR, "#top5 tr")) == 5
    d.find_element(By.CSS_SELECTOR, '#methods input[value="layercam"]').click()
    d.find_element(By.CSS_SELECTOR, '#layer option[value="layer3"]').click()
    d.find_element(By.ID, "explain").click()
    _wait(browser, lambda d: d.find_element(By.ID, "maps").get_attribute("data-ms"))
    shown = [img.get_attribute("data-method") for img in d.find_elements(By.CSS_SELECTOR,
                                                                        "#maps img")]
    assert shown == ["gradcam", "layercam"]
    assert browser.images_rendered() == []
    d.find_elements(By.CSS_SELECTOR, "#maps a.npy")[1].click()
    files = _wait(browser, lambda d: [p for p in browser.downloads.glob("*layercam*.npy")])
    assert np.array_equal(np.load(files[0]), api_map(app, PHOTO, "layercam", "layer3").numpy())
    assert browser.errors() == []
    assert browser.remote_requests() == []


@needs_browser
def test_page_detection_click_shows_its_map(server, browser):
    from selenium.webdriver.common.by import By
    _open_page(browser, server)
    d = browser.driver
    d.find_element(By.CSS_SELECTOR, '#tabs button[value="det"]').click()
    d.find_element(By.CSS_SELECTOR, f'#samples img[data-name="{SCENE.name}"]').click()
    _wait(browser, lambda d: SCENE.name in d.find_element(By.ID, "current").text)
    d.find_element(By.ID, "detect").click()
    _wait(browser, lambda d: d.find_element(By.ID, "det").get_attribute("data-ms"))
    boxes = d.find_elements(By.CSS_SELECTOR, "#boxes rect")
    assert len(boxes) >= 2
    d.execute_script("arguments[0].dispatchEvent(new MouseEvent('click'))", boxes[1])
    _wait(browser, lambda d: d.find_element(By.ID, "boxmaps").get_attribute("data-rank") == "1")
    assert "#2" in d.find_element(By.CSS_SELECTOR, "#boxmaps figcaption").text
    assert browser.images_rendered() == []
    assert browser.errors() == []
    assert browser.remote_requests() == []


@needs_browser
def test_page_bad_upload_shows_an_error_and_the_next_works(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    _open_page(browser, server)
    d = browser.driver
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    _upload(browser, bad, opens=False)
    err = d.find_element(By.ID, "err")
    assert not err.get_attribute("hidden") and "cannot read image notes.png" in err.text
    _upload(browser, PHOTO)
    _wait(browser, lambda d: d.find_element(By.ID, "err").get_attribute("hidden"))
    assert len(d.find_elements(By.CSS_SELECTOR, "#top5 tr")) == 5
    d.find_element(By.ID, "explain").click()
    _wait(browser, lambda d: d.find_element(By.ID, "maps").get_attribute("data-ms"))
    assert browser.images_rendered() == []
    # the refused upload's answer (400) is the one console error
    assert all("api/open" in e["message"] and "400" in e["message"] for e in browser.errors())
    assert browser.remote_requests() == []
