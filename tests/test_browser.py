"""The main journey in a real Chromium: open, upload, probabilities and overlay, explorer, performance,
admin login; a non-chest image that gets "Not assessed". Screenshots land in docs/screenshots when
CXRDEMO_SCREENSHOTS=1."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from pydicom.data import get_testdata_file

from cxrdemo.paths import REPO_ROOT

pytestmark = pytest.mark.browser
SLOW = 90_000  # ms: the first script run imports torch and loads models on a 2-core machine


def screenshot(page: Page, name: str) -> None:
    """Full-page screenshot: Streamlit scrolls inside stMain, so grow the viewport first."""
    if not os.environ.get("CXRDEMO_SCREENSHOTS"):
        return
    out = REPO_ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(800)
    height = page.get_by_test_id("stMain").evaluate("e => e.scrollHeight")
    viewport = page.viewport_size
    page.set_viewport_size({"width": viewport["width"], "height": min(max(viewport["height"], height), 4000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(out / f"{name}.png"))
    page.set_viewport_size(viewport)


def goto(page: Page, server: dict, path: str = "") -> None:
    page.goto(server["url"] + path)
    expect(page.get_by_test_id("stSidebarNav")).to_be_visible(timeout=SLOW)


def test_main_journey(page: Page, streamlit_server, sample_dir: Path):
    goto(page, streamlit_server)
    expect(page.get_by_role("heading", name="Diagnose")).to_be_visible(timeout=SLOW)
    expect(page.get_by_text("Research demo, not for clinical use").first).to_be_visible()

    xray = sorted((sample_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    uploader = page.get_by_test_id("stFileUploader").first
    uploader.locator("input[type=file]").set_input_files(str(xray))
    bars = page.locator(".cxr-probabilities").first
    expect(bars).to_be_visible(timeout=SLOW)
    expect(bars.get_by_role("meter", name="P(PNEUMONIA)")).to_be_visible()
    expect(bars.get_by_text(re.compile(r"^\d+\.\d%$")).first).to_be_visible()  # the probabilities, as text
    expect(page.get_by_text(re.compile(r"P\(PNEUMONIA\)")).first).to_be_visible()
    images = page.get_by_test_id("stImage")
    expect(images.nth(1)).to_be_visible(timeout=SLOW)  # original and Grad-CAM overlay side by side
    expect(page.get_by_text(re.compile("heatmap of")).first).to_be_visible()
    overlay = images.nth(1).locator("img").element_handle()
    page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=overlay, timeout=SLOW)  # it loads
    screenshot(page, "diagnose")

    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Dataset explorer").click()
    expect(page.get_by_role("heading", name="Dataset explorer")).to_be_visible(timeout=SLOW)
    expect(page.get_by_test_id("stImage").first.locator("img")).to_be_visible(timeout=SLOW)  # thumbnail grid
    screenshot(page, "explorer")
    page.get_by_role("tab", name=re.compile("Statistics")).click()
    expect(page.get_by_test_id("stPlotlyChart").first.locator(".main-svg").first).to_be_visible(timeout=SLOW)

    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Model performance").click()
    expect(page.get_by_role("heading", name="Model performance")).to_be_visible(timeout=SLOW)
    expect(page.get_by_text("All models").first).to_be_visible(timeout=SLOW)
    expect(page.get_by_test_id("stPlotlyChart").first.locator(".main-svg").first).to_be_visible(timeout=SLOW)
    screenshot(page, "performance")

    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", name="Admin")).to_be_visible(timeout=SLOW)
    page.get_by_label("Admin password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Wrong password.")).to_be_visible(timeout=SLOW)
    page.get_by_label("Admin password").fill(streamlit_server["password"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Start a training job")).to_be_visible(timeout=SLOW)


def test_bad_file_shows_one_line_message(page: Page, streamlit_server):
    goto(page, streamlit_server)
    uploader = page.get_by_test_id("stFileUploader").first
    uploader.locator("input[type=file]").set_input_files(
        files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"just some text, not an image"}]
    )
    error = page.get_by_test_id("stAlertContentError").first
    expect(error).to_be_visible(timeout=SLOW)
    expect(error).to_contain_text("notes.png")
    expect(page.get_by_text("Traceback")).to_have_count(0)


def test_withheld_verdict_on_a_ct_slice(page: Page, streamlit_server):
    """A CT slice is not what the models were made for: "Not assessed" and why, the output behind a click."""
    ct = get_testdata_file("CT_small.dcm")
    goto(page, streamlit_server)
    page.get_by_test_id("stFileUploader").first.locator("input[type=file]").set_input_files(ct)
    expect(page.get_by_role("heading", name="Not assessed")).to_be_visible(timeout=SLOW)
    reason = page.get_by_test_id("stAlertContentWarning").filter(has_text="Not assessed:")
    expect(reason).to_contain_text("does not look like the pediatric chest X-rays the models were trained on")
    expect(page.get_by_role("heading", name=re.compile(r"^(NORMAL|PNEUMONIA)$"))).to_have_count(0)
    expect(page.locator(".cxr-probabilities")).to_be_hidden()  # collapsed until asked for
    output = page.get_by_test_id("stExpander").filter(has_text="Show the model's output anyway")
    output.get_by_text("Show the model's output anyway").click()
    expect(output.get_by_text(re.compile("^Not a diagnosis"))).to_be_visible()
    bars = output.locator(".cxr-probabilities")
    expect(bars).to_be_visible(timeout=SLOW)
    expect(bars.get_by_text(re.compile(r"^\d+\.\d%$")).first).to_be_visible()  # the probabilities
    expect(output.get_by_text(re.compile("heatmap of"))).to_be_visible(timeout=SLOW)
    screenshot(page, "withheld")


def test_deep_link_keeps_navigation(page: Page, streamlit_server):
    goto(page, streamlit_server, "/admin")
    expect(page.get_by_role("heading", name="Admin")).to_be_visible(timeout=SLOW)
    nav = page.get_by_test_id("stSidebarNav")
    expect(nav.get_by_role("link", name="Dataset explorer")).to_be_visible()
    expect(nav.get_by_role("link", name="app")).to_have_count(0)


def test_simultaneous_sessions_are_isolated(browser, browser_context_args, streamlit_server, sample_dir: Path):
    """Three browser sessions upload different X-rays at the same moment; each sees only its own."""
    files = sorted((sample_dir / "test").glob("*/*.jpeg"))[:3]
    contexts = [browser.new_context(**browser_context_args) for _ in files]
    try:
        pages = [context.new_page() for context in contexts]
        for page in pages:
            goto(page, streamlit_server)
            page.get_by_test_id("stFileUploader").first.locator("input[type=file]").wait_for(state="attached")
        for page, path in zip(pages, files):  # all uploads sent before any answer is awaited
            page.get_by_test_id("stFileUploader").first.locator("input[type=file]").set_input_files(str(path))
        for page, path in zip(pages, files):
            expect(page.get_by_text(f"{path.name} (JPEG)").first).to_be_visible(timeout=SLOW)
            expect(page.get_by_text("heatmap of").first).to_be_visible(timeout=SLOW)
            for other in files:
                if other != path:
                    expect(page.get_by_text(other.name)).to_have_count(0)
    finally:
        for context in contexts:
            context.close()
