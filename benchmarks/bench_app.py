"""The app as a user meets it, in the system Chromium: cold start and upload-to-answer times.

    python -m benchmarks.bench_app [--repeats 3]

Cold start: from launching `streamlit run app.py` to the Diagnose page's uploader visible in the browser
(target 5 s). First upload: with `--think 0`, right after that, while the models still warm up (target
1.5 s to the answer); later uploads are the warm figures.
Upload: from handing the browser a bundled chest X-ray to the probability bars and the Grad-CAM
overlay both visible (default model, CPU), first upload and repeated ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

from playwright.sync_api import expect, sync_playwright

from benchmarks.streamlit_server import CHROMIUM, CHROMIUM_ARGS, serve
from cxrdemo.paths import SAMPLE_DIR


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--think", type=float, default=0.0, help="seconds on the page before the first upload")
    args = parser.parse_args()
    files = sorted((SAMPLE_DIR / "test").glob("*/*.jpeg"))
    rows = []
    for attempt in range(args.repeats):
        start = time.perf_counter()
        with serve() as url:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                expect(page.get_by_role("heading", name="Diagnose")).to_be_visible(timeout=60_000)
                expect(page.get_by_test_id("stFileUploader").first).to_be_visible(timeout=60_000)
                cold = time.perf_counter() - start
                page.wait_for_timeout(args.think * 1000)  # a user finding the file; the models warm up meanwhile
                uploads = []
                for i in range(3):
                    path = files[(attempt * 3 + i) % len(files)]
                    if i:  # the same tab, the previous file removed: one image on the page at a time
                        page.get_by_test_id("stFileChipDeleteBtn").first.click()
                        expect(page.get_by_text("heatmap of")).to_have_count(0, timeout=60_000)
                    t0 = time.perf_counter()
                    page.get_by_test_id("stFileUploader").first.locator("input[type=file]").set_input_files(str(path))
                    expect(page.get_by_text(f"{path.name} (JPEG)").first).to_be_visible(timeout=60_000)
                    expect(page.get_by_text("heatmap of").first).to_be_visible(timeout=60_000)
                    expect(page.locator(".cxr-probabilities").first).to_be_visible()
                    uploads.append(time.perf_counter() - t0)
                browser.close()
            rows.append((cold, uploads))
    cmd = f"python -m benchmarks.bench_app --repeats {args.repeats} --think {args.think:g}"
    colds = [r[0] for r in rows]
    firsts = [r[1][0] for r in rows]
    later = [u for r in rows for u in r[1][1:]]
    print("first uploads, s: " + " ".join(f"{t:.2f}" for t in firsts))
    print("| measurement | median s | max s | n | command |")
    print("|---|---|---|---|---|")
    print(
        f"| cold start to the uploader | {statistics.median(colds):.2f} | {max(colds):.2f} | {len(colds)} | `{cmd}` |"
    )
    print(
        f"| first upload, {args.think:g} s after the page appeared | {statistics.median(firsts):.2f} "
        f"| {max(firsts):.2f} | {len(firsts)} | `{cmd}` |"
    )
    if later:
        print(
            f"| later upload to probabilities + overlay | {statistics.median(later):.2f} | {max(later):.2f} "
            f"| {len(later)} | `{cmd}` |"
        )


if __name__ == "__main__":
    main()
