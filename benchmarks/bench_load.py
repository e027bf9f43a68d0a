"""Load run: N simultaneous browser sessions uploading X-rays to the Diagnose page of one server.

    python -m benchmarks.bench_load --sessions 1 4 8 --rounds 2

Each round opens N fresh sessions (browser contexts, so Streamlit sessions) and sends each a different
bundled X-ray at the same moment; latency is from sending to that session showing its probabilities and
overlay (polled session by session, so an upper bound). The server shares one cached model, as in use.
"""

from __future__ import annotations

import argparse
import statistics
import time

from playwright.sync_api import expect, sync_playwright

from benchmarks.streamlit_server import CHROMIUM, CHROMIUM_ARGS, serve
from cxrdemo.paths import SAMPLE_DIR

TIMEOUT_MS = 120_000


def run_sessions(browser, url: str, n: int, rounds: int, files) -> tuple[list[float], float]:
    """`rounds` times: open n fresh sessions, send each a different X-ray at once, wait for every answer."""
    latencies, busy = [], 0.0
    for r in range(rounds):
        contexts = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(n)]
        pages = [c.new_page() for c in contexts]
        for page in pages:
            page.goto(url)
            expect(page.get_by_role("heading", name="Diagnose")).to_be_visible(timeout=TIMEOUT_MS)
        chosen = [files[(r * n + i) % len(files)] for i in range(n)]
        start = time.perf_counter()
        sent = []
        for page, path in zip(pages, chosen):
            page.get_by_test_id("stFileUploader").first.locator("input[type=file]").set_input_files(str(path))
            sent.append(time.perf_counter())
        for page, path, t0 in zip(pages, chosen, sent):
            expect(page.get_by_text(f"{path.name} (JPEG)").first).to_be_visible(timeout=TIMEOUT_MS)
            expect(page.get_by_text("heatmap of").first).to_be_visible(timeout=TIMEOUT_MS)
            latencies.append(time.perf_counter() - t0)
        busy += time.perf_counter() - start
        for context in contexts:
            context.close()
    return latencies, busy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    files = sorted((SAMPLE_DIR / "test").glob("*/*.jpeg"))
    print("| sessions | uploads | p50 s | p95 s | throughput uploads/s | command |")
    print("|---|---|---|---|---|---|")
    with serve() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        run_sessions(browser, url, 1, 1, files)  # warm the server: models load once per process
        for n in args.sessions:
            lat, wall = run_sessions(browser, url, n, args.rounds, files)
            lat.sort()
            p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
            print(
                f"| {n} | {len(lat)} | {statistics.median(lat):.2f} | {p95:.2f} | {len(lat) / wall:.2f} "
                f"| `python -m benchmarks.bench_load --sessions {n} --rounds {args.rounds}` |"
            )
        browser.close()


if __name__ == "__main__":
    main()
