"""The explorer's time from click to picture against the API's own time for the same map,
measured in one run.

Three cases, as the issue names them: ResNet-50 at 224 px with random weights (Grad-CAM at its
auto layer, on a photo), the shipped Fashion-MNIST classifier (Grad-CAM, on a test image), and
the shipped scene detector with LayerCAM at layer2, layer3 and layer4 (on a scene). For each:

* API: the median time of the call the explorer makes (``explain.heatmaps``, or
  ``detection.explain_detections``) on the same prepared input;
* page: the median time from a click on "Explain" / "Detect and explain" in headless Chromium
  to every picture of the answer drawn (the page measures it: ``performance.now()`` at the
  click, and when the last ``<img>`` has loaded); without Chromium, the HTTP round trips a
  page makes (start the task, fetch the pictures) measured from Python instead.

    python bench/bench_explorer.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

import cli_serve
import explorer
from data import open_image
from runtime import cpu_name
from tests.browser import Browser, missing


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(api, page, repeats: int) -> tuple[float, float]:
    """Median API and page times, one of each in turn after a warm-up of both, so that a
    change in the machine's load touches both alike."""
    api()
    page()
    pairs = [(timed(api), page()) for _ in range(repeats)]
    return statistics.median(a for a, _ in pairs), statistics.median(p for _, p in pairs)


def serve(app: explorer.Explorer):
    server = explorer.make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as r:
        return json.loads(r.read())


def http_clicks(address: str, path: str, ask: dict, pictures):
    """A page's round trips from Python: start the task (answered when done), fetch every
    picture of the answer; returns a function timing one such click."""
    def once() -> None:
        out = post(address + path, {**ask, "wait": 60})
        assert out["state"] == "done", out
        for name in pictures(out["result"]):
            with urllib.request.urlopen(f"{address}api/file/{out['task']}/{name}") as r:
                r.read()
    return lambda: timed(once)


CLICK_AND_WAIT = """
const [doneId, buttonId, finish] = arguments;
const done = document.getElementById(doneId);
done.removeAttribute("data-ms");
const watch = new MutationObserver(() => {
  if (done.dataset.ms) { watch.disconnect(); finish(done.dataset.ms); }
});
watch.observe(done, {attributes: true, attributeFilter: ["data-ms"]});
document.getElementById(buttonId).click();
"""


def page_clicks(browser: Browser, address: str, sample: str, button: str, done: str, prepare):
    """Open the page and ``sample``; returns a function that clicks ``button`` and returns
    the page's own measure from the click to the last picture drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    d = browser.driver
    d.set_script_timeout(300)
    d.get(address)
    wait = WebDriverWait(d, 300, poll_frequency=0.02)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#samples img"))
    prepare(d)
    d.find_element(By.CSS_SELECTOR, f'#samples img[data-name="{sample}"]').click()
    wait.until(lambda d: d.find_element(By.ID, "current").text.startswith(sample))

    def click() -> float:
        # One WebDriver call that clicks and returns when the page has drawn the answer: a
        # Python loop polling the page meanwhile would take the CPU from the work it times.
        return float(d.execute_async_script(CLICK_AND_WAIT, done, button)) / 1000
    return click


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()
    from detection import explain_detections, image_array, to_tensor
    from detectors import load_detector
    from explain import heatmaps, probabilities
    from recipes import SHIPPED_CLASSIFIER
    from runtime import resolve_device
    from zoo import load_classifier
    device = resolve_device(args.device)
    torch.manual_seed(0)
    resnet50 = load_classifier("resnet50", None, device=device)
    shipped = load_classifier(None, str(ROOT / SHIPPED_CLASSIFIER), device=device)
    detector = load_detector(str(cli_serve.SHIPPED_DETECTOR), device)
    browser = None if missing() else Browser(Path("/tmp"))
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads, torch "
          f"{torch.__version__}; page timing: "
          f"{'headless Chromium' if browser else 'HTTP from Python (' + str(missing()) + ')'}")
    rows = []

    def classifier_case(title: str, loaded, sample: str, method: str) -> None:
        app = explorer.Explorer(loaded, None, device, cli_serve.samples(loaded, str(ROOT / "data")))
        data, pixels = app.samples[sample]()
        pixels = pixels if pixels is not None else loaded.inputs.pixels(open_image(io.BytesIO(data)))
        images = loaded.inputs.normalize(pixels)[None].to(device)
        target = probabilities(loaded.module, images, 1).argmax(1)
        def api():
            return heatmaps(loaded.module, images, target, method, loaded.layer("auto"), 1)
        server = serve(app)
        address = server.url
        opened = post(address + "api/open", {"sample": sample})
        if browser:
            def prepare(d):
                from selenium.webdriver.common.by import By
                for box in d.find_elements(By.CSS_SELECTOR, "#methods input"):
                    if box.is_selected() != (box.get_attribute("value") == method):
                        box.click()
            page = page_clicks(browser, address, sample, "explain", "maps", prepare)
        else:
            page = http_clicks(address, "api/explain", {"image": opened["id"], "methods": [method]},
                               lambda r: [m["png"] for m in r["maps"]])
        api, page = interleaved(api, page, args.repeats)
        server.shutdown()
        server.server_close()
        rows.append((title, api, page))

    def detector_case(title: str, sample: str, layers: list[str]) -> None:
        app = explorer.Explorer(None, detector, device, cli_serve.samples(None, ""))
        data, _ = app.samples[sample]()
        image = to_tensor(image_array(open_image(io.BytesIO(data)), detector.input_fit), device)
        def api():
            return explain_detections(detector.model, image, layers, detector.score_thresh, 20,
                                      method="layercam")
        server = serve(app)
        address = server.url
        opened = post(address + "api/open", {"sample": sample})
        if browser:
            def prepare(d):
                from selenium.webdriver.common.by import By
                d.find_element(By.CSS_SELECTOR, '#detmethod option[value="layercam"]').click()
                for box in d.find_elements(By.CSS_SELECTOR, "#detlayers input"):
                    if not box.is_selected():
                        box.click()
            page = page_clicks(browser, address, sample, "detect", "det", prepare)
        else:
            page = http_clicks(address, "api/detect", {"image": opened["id"],
                                                       "method": "layercam", "layers": layers},
                               lambda r: [f"box_0_{x}.png" for x in r["layers"]])
        api, page = interleaved(api, page, args.repeats)
        server.shutdown()
        server.server_close()
        rows.append((title, api, page))

    classifier_case("ResNet-50 224 px, random weights, Grad-CAM", resnet50, "astronaut.jpg",
                    "gradcam")
    classifier_case("shipped classifier (32 px), Grad-CAM", shipped, "test_0.png", "gradcam")
    detector_case("shipped detector, LayerCAM at layer2,3,4", "000001.png",
                  ["layer2", "layer3", "layer4"])
    if browser:
        browser.close()
    print(f"{'case':<46} {'API':>9} {'page':>9} {'ratio':>6}")
    for title, api, page in rows:
        print(f"{title:<46} {api * 1000:7.1f}ms {page * 1000:7.1f}ms {page / api:6.2f}")


if __name__ == "__main__":
    main()
