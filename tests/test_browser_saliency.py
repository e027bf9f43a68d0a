"""The performance page's saliency section in a real Chromium: the benchmark table is on screen and
readable, the example overlays load. docs/screenshots/saliency.png when CXRDEMO_SCREENSHOTS=1."""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import Page, expect

from cxrdemo.evaluation import saliency
from cxrdemo.paths import REPO_ROOT
from tests.test_browser import SLOW, goto

pytestmark = pytest.mark.browser


def section_screenshot(page: Page, top, bottom, name: str) -> None:
    """Screenshot from the top of `top` to the top of `bottom`: the viewport is grown to the whole page
    first, since Streamlit scrolls inside stMain and a shot below the fold would come out blank."""
    if not os.environ.get("CXRDEMO_SCREENSHOTS"):
        return
    out = REPO_ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    height = page.get_by_test_id("stMain").evaluate("e => e.scrollHeight")
    page.set_viewport_size({"width": viewport["width"], "height": max(viewport["height"], height)})
    page.wait_for_timeout(800)
    start, end = top.bounding_box(), bottom.bounding_box()
    main = page.get_by_test_id("stMainBlockContainer").bounding_box()
    clip = {"x": main["x"], "y": start["y"] - 8, "width": main["width"], "height": end["y"] - start["y"]}
    page.screenshot(path=str(out / f"{name}.png"), clip=clip)
    page.set_viewport_size(viewport)


def test_saliency_table_is_visible(page: Page, streamlit_server):
    goto(page, streamlit_server, "/performance")
    expect(page.get_by_role("heading", name="Model performance")).to_be_visible(timeout=SLOW)
    heading = page.get_by_role("heading", name="Saliency")
    expect(heading).to_be_attached(timeout=SLOW)
    heading.scroll_into_view_if_needed()
    table = page.get_by_test_id("stDataFrame").filter(has_text="CAM method")
    table.scroll_into_view_if_needed(timeout=SLOW)
    expect(table).to_be_visible(timeout=SLOW)
    for model_id in sorted({row["model"] for row in saliency.load_results()["rows"]}):
        expect(table).to_contain_text(model_id)  # a row per benchmarked model
    overlays = page.get_by_test_id("stImage").filter(has_text=re.compile("film; heatmap of"))
    expect(overlays).to_have_count(4, timeout=SLOW)
    for i in range(4):
        overlays.nth(i).scroll_into_view_if_needed()
        expect(overlays.nth(i).locator("img")).to_be_visible(timeout=SLOW)
        assert overlays.nth(i).locator("img").evaluate("e => e.complete && e.naturalWidth") > 0
    ood = page.get_by_role("heading", name="Out-of-distribution check")
    expect(ood).to_be_attached()
    section_screenshot(page, heading, ood, "saliency")
