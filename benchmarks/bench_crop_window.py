"""Why lung-crop models flip under the lung-sparing height cut: where the crop window lands on the cut film.

    python -m benchmarks.bench_crop_window

For up to 200 validation films of the default model (those with a manual lung mask), the segmenter's box
is found on the whole film and on the lung-sparing height cut (`frame.crop_sparing`). Prints the IoU of the
two crop windows (in the whole film's pixels) and the share of window rows outside the film (black padding)
before and after the cut. Writes nothing.
"""

from __future__ import annotations

import numpy as np

from benchmarks.bench_saliency import default_data, default_masks
from cxrdemo.data.dataset import load_dataset
from cxrdemo.evaluation import frame
from cxrdemo.imaging import lungs
from cxrdemo.imaging.preprocess import LUNG_MARGIN, crop_window
from cxrdemo.models.registry import load_card


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def _black_rows(y0: int, y1: int, top: int, bottom: int) -> float:
    """Share of a window's rows [y0, y1) outside the film's rows [top, bottom)."""
    return (max(0, top - y0) + max(0, y1 - bottom)) / (y1 - y0)


def main() -> None:
    data = default_data()
    images = frame.load_validation(load_dataset(data), load_card("resnet18-binary"), default_masks(data), limit=200)
    iou, black_whole, black_cut = [], [], []
    for pixels, box in zip(images.pixels, images.boxes):
        if box is None:
            continue
        h = pixels.shape[0]
        low, high = frame.spared_cuts(h, box[0], box[1], frame.CROP_FRACTION, frame.SPARED_MARGIN)
        cut = pixels[low : h - high]
        whole_fields, cut_fields = lungs.find_lungs(pixels), lungs.find_lungs(cut)
        if not (whole_fields.plausible and cut_fields.plausible):
            continue
        before = crop_window(pixels.shape, whole_fields.box, LUNG_MARGIN)
        x0, y0, x1, y1 = crop_window(cut.shape, cut_fields.box, LUNG_MARGIN)
        after = (x0, y0 + low, x1, y1 + low)  # in the whole film's pixels
        iou.append(_iou(before, after))
        black_whole.append(_black_rows(before[1], before[3], 0, h))
        black_cut.append(_black_rows(after[1], after[3], low, h - high))
    iou_a, whole_a, cut_a = map(np.array, (iou, black_whole, black_cut))
    print(f"films {len(iou_a)}; crop-window IoU whole vs lung-sparing height cut: median {np.median(iou_a):.3f}")
    print(f"window rows outside the film: whole {whole_a.mean():.3f}, cut {cut_a.mean():.3f}")
    print(f"films whose window gains black rows after the cut: {(cut_a > whole_a + 0.005).mean():.2f}")


if __name__ == "__main__":
    main()
