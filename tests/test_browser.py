"""The report in a real headless Chromium, offline: circuitsvis draws, no console errors.

Needs /usr/bin/chromium + chromedriver (Debian: apt-get install -y chromium
chromium-driver) and selenium (the `dev` extra); skipped only when no Chromium exists."""

from __future__ import annotations

import pytest

from tempo_lens import generate
from tempo_lens.testing import tiny_model
from tempo_lens.viz import build_report, write_report
from tempo_lens.viz.browser import check_page, find_chromium

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        find_chromium() is None,
        reason="no chromium binary (apt-get install -y chromium chromium-driver)",
    ),
]


def assert_rendered(page, n_views: int) -> None:
    assert page.errors == []
    assert page.console_errors == [], page.console_errors
    assert len(page.roots) == n_views
    for root in page.roots:
        assert root["elements"] >= 10, root  # circuitsvis drew into its root
    # offline and self-contained: the page fetched nothing but itself
    assert all(url.startswith(("file:", "data:")) for url in page.resources), page.resources
    assert page.screenshot is not None and page.screenshot.stat().st_size > 10_000


def test_report_renders_offline(tmp_path):
    from selenium.webdriver.support.ui import Select

    model = tiny_model("llama")
    run = generate(model, "hello wor", threshold=0.1, max_steps=6, eos_token_id=None)
    run.save(tmp_path / "run")
    html = write_report(build_report(tmp_path / "run", model=model), tmp_path / "report.html")
    picked = {}

    def pick_layer_1_head_2(driver):
        att = driver.find_element("css selector", ".attention")
        Select(att.find_element("css selector", "select.layer")).select_by_value("1")
        Select(att.find_element("css selector", "select.head")).select_by_value("2")
        picked["text"] = att.find_element("css selector", ".cv-root").text

    page = check_page(html, tmp_path / "report.png", actions=pick_layer_1_head_2)
    assert_rendered(page, 2)
    tokens, attention = page.roots
    # labels numbered once: sets grouped by brackets, the first member with its position
    assert "┌" in tokens["text"] and f"@{run.steps[0].position}" in tokens["text"]
    assert "·" not in tokens["text"]
    assert "L1H2" in picked["text"] and "L0H0" not in picked["text"]  # the picker re-drew
    assert "L1H2" in attention["text"]


@pytest.mark.embedded
def test_cat_report_renders_offline(tmp_path, embedded):
    """The issue's own example: the cat run (no attention captured) replayed on the
    embedded model, default settings."""
    run = generate(embedded, "The cat sat on the", threshold=0.1)
    run.save(tmp_path / "cat")
    html = write_report(build_report(tmp_path / "cat", model=embedded), tmp_path / "r.html")
    assert html.stat().st_size < 15e6
    page = check_page(html, tmp_path / "report.png")
    assert_rendered(page, 2)
    assert [f"L0H{h}" in page.roots[1]["text"] for h in range(9)] == [True] * 9
