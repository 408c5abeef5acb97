"""Open a report in a real headless Chromium, offline, and check what it drew.

Used by the browser test and by `tempo-lens report --screenshot`. Needs a Chromium binary
(Debian: `apt-get install -y chromium chromium-driver`) and `selenium` (the `dev` extra);
selenium is pointed at the system chromedriver, so nothing is downloaded.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tempo_lens.errors import TempoError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    # every host name fails to resolve: no request can leave the machine
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
INSTALL = "apt-get install -y chromium chromium-driver; pip install selenium"

# Per circuitsvis root: how many elements it drew. Run after the page settles.
_COUNT_JS = """
return Array.from(document.querySelectorAll('.cv-root')).map(function (r) {
  return {id: r.id, view: r.closest('[data-tl-view]').dataset.tlView,
          elements: r.querySelectorAll('*').length, text: r.innerText.slice(0, 2000)};
});
"""


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What the browser saw: drawn elements per circuitsvis root, console messages,
    every resource the page fetched."""

    roots: list[dict[str, Any]]
    console: list[dict[str, Any]]
    resources: list[str]
    screenshot: Path | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def console_errors(self) -> list[dict[str, Any]]:
        return [m for m in self.console if m.get("level") == "SEVERE"]


def _driver(user_data_dir: str, width: int, height: int) -> Any:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        raise TempoError(f"selenium is not installed; run: {INSTALL}") from err
    chromium = find_chromium()
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        raise TempoError(f"no chromium/chromedriver on PATH; run: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0},
    )
    return driver


def check_page(
    html_path: str | Path,
    screenshot: str | Path | None = None,
    *,
    width: int = 1280,
    height: int = 2000,
    timeout: float = 30.0,
    actions: Any = None,
) -> PageCheck:
    """Open `html_path` (file://, networking off), wait until every circuitsvis root has
    drawn, run `actions(driver)` if given, and report what rendered. A screenshot of the
    page's top `height` pixels goes to `screenshot`."""
    from selenium.webdriver.support.ui import WebDriverWait

    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="tempo-chromium-") as profile:
        driver = _driver(profile, width, height)
        try:
            driver.get(url)
            errors: list[str] = []
            try:
                WebDriverWait(driver, timeout).until(
                    lambda d: (
                        (r := d.execute_script(_COUNT_JS)) and all(x["elements"] > 0 for x in r)
                    )
                )
            except Exception as err:  # noqa: BLE001 - a timeout is a finding, not a crash
                errors.append(f"circuitsvis roots did not all render within {timeout} s: {err}")
            if actions is not None:
                actions(driver)
            roots = driver.execute_script(_COUNT_JS)
            resources = driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)"
            )
            shot = None
            if screenshot is not None:
                shot = Path(screenshot)
                shot.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(shot))
            console = driver.get_log("browser")
        finally:
            driver.quit()
    return PageCheck(roots, console, resources, shot, errors)
