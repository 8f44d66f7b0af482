"""Debian's Chromium, headless, driven by Selenium: for the tests of the report and the
explorer. The tests skip (with the reason) where Chromium or its driver is not installed; CI
installs both (``apt-get install chromium chromium-driver``)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
LOCAL = ("127.0.0.1", "localhost", "[::1]", "::1")


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path, what in ((CHROMIUM, "chromium"), (DRIVER, "chromedriver")):
        if not Path(path).is_file():
            return f"{what} is not installed (apt-get install chromium chromium-driver)"
    return None


needs_browser = pytest.mark.skipif(missing() is not None, reason=missing() or "")


class Browser:
    """One headless Chromium; its console and network logs are kept across reads."""

    def __init__(self, downloads: Path):
        os.environ.setdefault("SE_AVOID_STATS", "true")   # no usage statistics from Selenium
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1400", "--no-first-run", "--disable-extensions",
                    "--disable-component-update", "--disable-background-networking",
                    "--disable-sync", "--disable-default-apps"):
            options.add_argument(arg)
        options.binary_location = CHROMIUM
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        options.add_experimental_option("prefs", {
            "download.default_directory": str(downloads), "download.prompt_for_download": False})
        self.downloads = downloads
        self.driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        self.driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                    {"behavior": "allow", "downloadPath": str(downloads)})
        self.console: list[dict] = []
        self.requests: list[str] = []

    def read_logs(self) -> None:
        self.console += self.driver.get_log("browser")
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])

    def errors(self) -> list[dict]:
        """Console errors since the start (a failed load counts)."""
        self.read_logs()
        return [e for e in self.console if e["level"] == "SEVERE"]

    def remote_requests(self) -> list[str]:
        """Every request the pages made that left the machine (none should)."""
        self.read_logs()
        outside = []
        for url in self.requests:
            parsed = urlparse(url)
            if parsed.scheme in ("file", "data", "blob", "about", "chrome", "devtools"):
                continue
            if parsed.hostname not in LOCAL:
                outside.append(url)
        return outside

    def images_rendered(self) -> list[str]:
        """The ``src`` of every ``<img>`` of the page that has one and has not rendered (lazy
        ones are made eager and awaited first)."""
        d = self.driver
        d.execute_script("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
        d.execute_async_script("""const done = arguments[arguments.length - 1];
            Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(
              ok => { i.onload = i.onerror = ok; }))).then(() => done());""")
        return d.execute_script(
            "return [...document.images].filter(i => i.getAttribute('src') && "
            "!(i.naturalWidth > 0)).map(i => i.src)")

    def close(self) -> None:
        self.driver.quit()


def open_browser(tmp_path_factory):
    """The body of a test module's ``browser`` fixture: one Chromium for the module (skipped,
    with the reason, where none is installed)."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    b = Browser(tmp_path_factory.mktemp("downloads"))
    b.driver.set_script_timeout(60)
    yield b
    b.close()
