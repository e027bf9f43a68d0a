"""How often the "is this a chest X-ray like the training data?" check fires.

    python -m benchmarks.bench_ood --data ../shared/data/chest_xray

Rows: every non-chest-X-ray image that installed packages ship (`cxrdemo.imaging.ood_corpus`), by category,
and the test split (normal and pneumonia), with the fraction flagged. Thresholds come from the
validation split only (see `cxrdemo.inference.ood`); this script only measures.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from cxrdemo.data.dataset import load_dataset
from cxrdemo.imaging.decode import ImageLoadError, load_image, load_image_file
from cxrdemo.imaging.ood_corpus import ood_images
from cxrdemo.inference.predict import Predictor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    args = parser.parse_args()
    predictor = Predictor()
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    unreadable = 0
    for item in ood_images():
        try:
            image = load_image(item.data, item.name)
        except ImageLoadError:
            unreadable += 1  # refused outright, never classified
            continue
        flagged, _, _ = predictor.out_of_distribution(image.pixels)
        counts[f"not a chest X-ray: {item.category}"][0] += int(bool(flagged))
        counts[f"not a chest X-ray: {item.category}"][1] += 1
    dataset = load_dataset(args.data)
    for _, row in dataset.split("test").iterrows():
        flagged, _, _ = predictor.out_of_distribution(load_image_file(dataset.absolute(row["path"])).pixels)
        counts[f"test split: {row['label']}"][0] += int(bool(flagged))
        counts[f"test split: {row['label']}"][1] += 1
    command = f"python -m benchmarks.bench_ood --data {args.data}"
    print("| images | n | flagged | command |")
    print("|---|---|---|---|")
    total = [0, 0]
    for name, (hit, n) in sorted(counts.items()):
        print(f"| {name} | {n} | {hit / n:.1%} | `{command}` |")
        if name.startswith("not"):
            total[0] += hit
            total[1] += n
    print(f"| all non-chest-X-ray images | {total[1]} | {total[0] / total[1]:.1%} | `{command}` |")
    print(f"| non-chest-X-ray files refused as unreadable | {unreadable} | - | `{command}` |")


if __name__ == "__main__":
    main()
