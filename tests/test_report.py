"""``report.html``: written by every job that writes files, listed in its manifest, linking
only to the run's own files; and in headless Chromium (tests/browser.py): no console error,
every image renders, the leaderboard sorts, a gallery picture enlarges, no request leaves."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

import commands
import main
import report
from tests.browser import needs_browser, open_browser
from tests.cli import ROOT

SCENES = ROOT / "data" / "fashion_scenes"
DETECTOR = ROOT / "checkpoints" / "fasterrcnn_fashion_scenes.pth"


def run(*args: str) -> None:
    assert main.main([str(a) for a in args]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A leaderboard run, a VOC-style detection run and a heatmaps run, small."""
    root = tmp_path_factory.mktemp("runs")
    out = {name: root / name for name in ("board", "voc", "maps")}
    run("--mode", "test", "--vis", "gradcam", "--target_layer", "layer4",
        "--hidden_strategy", "zero", "--num_eval", "4", "--steps", "2", "--precision", "fp32",
        "--out_dir",
        out["board"])
    run("--det_vis", "--voc_path", SCENES, "--det_num", "1", "--det_weights", DETECTOR,
        "--det_layer", "layer3,layer4", "--det_per_box", "--out_dir", out["voc"])
    run("--mode", "test", "--vis", "gradcam", "--vis_num", "3", "--out_dir", out["maps"])
    return out


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def links(page: Path) -> list[str]:
    parser = Links()
    parser.feed(page.read_text())
    return parser.links


@pytest.mark.parametrize("name", ["board", "voc", "maps"])
def test_report_lists_the_run_and_links_only_its_files(runs, name):
    folder = runs[name]
    page = folder / report.REPORT_NAME
    manifests = sorted((folder / "runs").glob("*.txt"))
    assert len(manifests) == 1
    listed = manifests[0].read_text().splitlines()
    assert str(page) in listed                      # written through outputs.py, recorded
    targets = [unquote(link) for link in links(page)]
    assert f"runs/{manifests[0].name}" in targets   # the manifest is linked
    for target in targets:
        assert not re.match(r"^[a-z]+://", target), target   # no network, no CDN
        assert (folder / target).is_file(), target
    linked = {str((folder / t).resolve()) for t in targets}
    for path in listed[1:]:   # every file of the run is shown or linked
        if not path.endswith(("report.html", ".pth")):
            assert str(Path(path).resolve()) in linked, path
    text = page.read_text()
    for fact in ("Command", "Model", "Device", "Precision", "Images", "Wall time"):
        assert f"<th>{fact}</th>" in text


def test_report_says_what_the_figures_show(runs):
    text = (runs["board"] / report.REPORT_NAME).read_text()
    assert "Deletion and insertion curves of Grad-CAM" in text
    assert "lower is better" in text and "random-map baseline" in text
    assert "Random (baseline)" in text and "Centre prior (baseline)" in text
    voc = (runs["voc"] / report.REPORT_NAME).read_text()
    assert "Detection metrics" in voc and "AP@0.5" in voc
    assert "Image 000000" in voc and "000000_layer4_boxes/01_" in voc   # grouped by image


def test_page_is_small_and_self_contained():
    assert len(report.STYLE) + len(report.SCRIPT) < 4000
    assert "http" not in report.STYLE + report.SCRIPT


def test_accuracy_tables_and_random_weights():
    facts = report.RunFacts("python main.py", "test", "test accuracy", "resnet18", True, "cpu",
                            "fp32", 10, 1.5, {"accuracy": 90.0, "n": 10,
                                              "per_class": {"cat": 80.0, "dog": 100.0}})
    page = report.render(Path("/nowhere"), [], facts, None)
    assert "Accuracy: 90.00% of 10 images" in page and "(random weights)" in page
    assert '<td data-v="80.0">80.00</td>' in page


def test_note_refuses_an_unknown_fact():
    with pytest.raises(TypeError):
        commands.note(colour="blue")


# --------------------------------------------------------------------------------------------
# In the browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    yield from open_browser(tmp_path_factory)


def _open(browser, page: Path) -> None:
    browser.driver.get(page.as_uri())
    assert browser.images_rendered() == []


def _column(browser, table, index: int) -> list[float]:
    return browser.driver.execute_script(
        "return [...arguments[0].tBodies[0].rows].map(r => parseFloat("
        "r.cells[arguments[1]].dataset.v ?? r.cells[arguments[1]].textContent))",
        table, index)


@needs_browser
def test_leaderboard_report_in_the_browser(runs, browser):
    from selenium.webdriver.common.by import By
    _open(browser, runs["board"] / report.REPORT_NAME)
    table = browser.driver.find_element(By.CSS_SELECTOR, "table:not(.facts)")
    headers = table.find_elements(By.TAG_NAME, "th")
    column = [h.text for h in headers].index("Deletion AUC ↓")
    headers[column].click()
    values = _column(browser, table, column)
    assert values == sorted(values) and len(values) == 3   # a method and two baselines
    headers[column].click()
    assert _column(browser, table, column) == sorted(values, reverse=True)
    assert browser.errors() == []
    assert browser.remote_requests() == []


@needs_browser
def test_detection_report_in_the_browser(runs, browser):
    from selenium.webdriver.common.by import By
    _open(browser, runs["voc"] / report.REPORT_NAME)
    d = browser.driver
    thumb = d.find_element(By.CSS_SELECTOR, ".gal img")
    d.execute_script("arguments[0].scrollIntoView()", thumb)
    thumb.click()
    zoom = d.find_element(By.ID, "zoom")
    assert zoom.value_of_css_property("display") == "flex"
    assert d.find_element(By.CSS_SELECTOR, "#zoom img").get_attribute("src") == \
        thumb.get_attribute("src")
    zoom.click()
    assert zoom.value_of_css_property("display") == "none"
    _open(browser, runs["maps"] / report.REPORT_NAME)
    assert browser.errors() == []
    assert browser.remote_requests() == []
