"""Load run: N concurrent app sessions, each uploading X-rays to the Diagnose page.

    python -m benchmarks.bench_load --sessions 1 4 8 --uploads 3

Sessions are Streamlit AppTest instances in threads sharing one process (and so one cached model),
the same sharing a real server does. Prints latency p50/p95 per upload (upload to probabilities and
overlay) and throughput per session count.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from cxrdemo.paths import REPO_ROOT, SAMPLE_DIR


def one_session(files, uploads: int) -> list[float]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=300).run()
    latencies = []
    for i in range(uploads):
        path = files[i % len(files)]
        start = time.perf_counter()
        at.file_uploader(key="uploads").upload(path.name, path.read_bytes(), "image/jpeg").run()
        latencies.append(time.perf_counter() - start)
        if at.exception:
            raise RuntimeError(at.exception[0].value)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--uploads", type=int, default=3)
    args = parser.parse_args()
    files = sorted((SAMPLE_DIR / "test").glob("*/*.jpeg"))
    one_session(files, 1)  # warm caches: models load once per process
    print("| sessions | uploads | p50 s | p95 s | throughput uploads/s | command |")
    print("|---|---|---|---|---|---|")
    for n in args.sessions:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=n) as pool:
            results = list(pool.map(lambda _: one_session(files, args.uploads), range(n)))
        wall = time.perf_counter() - start
        lat = sorted(x for r in results for x in r)
        p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
        print(
            f"| {n} | {len(lat)} | {statistics.median(lat):.2f} | {p95:.2f} | {len(lat) / wall:.2f} "
            f"| `python -m benchmarks.bench_load --sessions {n} --uploads {args.uploads}` |"
        )


if __name__ == "__main__":
    main()
