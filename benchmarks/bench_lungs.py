"""The lung segmenter measured: Dice on validation masks, how often lungs are found, CPU time, outlines.

    python -m benchmarks.bench_lungs --data ../shared/data/chest_xray --masks ../shared/data/lung_masks

Prints: Dice on the validation masks (the classifiers' patient-grouped validation side; 224x224 copies
and full-resolution images apart), the share of images with plausible lungs (validation, the test films,
the non-chest-X-ray corpus), the plausibility features' quantiles (what `lungs.judge` decides on), and
find_lungs' CPU time per image. Writes `docs/images/lung_outlines.png`: predicted outlines on validation
films (the worst Dice first, then a spread), on DICOM re-encodings of them and on non-chest-X-ray images.
Test films are only counted (plausible or not), never matched to their masks here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cxrdemo.data.dataset import load_dataset
from cxrdemo.data.tensor_cache import load_pixels
from cxrdemo.imaging import lungs
from cxrdemo.imaging.decode import ImageLoadError, load_image, load_image_file
from cxrdemo.imaging.ood_corpus import ood_images
from cxrdemo.paths import REPO_ROOT
from cxrdemo.training.lung_seg import SegConfig, full_size_dice, masked_frames, predict_probabilities

TILE = 160


def features(fields: lungs.LungFields) -> tuple[float, float, float]:
    return fields.area, fields.confidence, fields.balance


def quantiles(values: list[float]) -> str:
    q = np.quantile(values, [0.0, 0.01, 0.05, 0.5, 0.95, 1.0]) if values else []
    return " ".join(f"{v:.3f}" for v in q)


def outline_tile(pixels: np.ndarray, fields: lungs.LungFields, caption: str) -> Image.Image:
    """The image squashed to a tile, the predicted lung outline in green (red box: none plausible)."""
    tile = Image.fromarray(lungs.squash(pixels, TILE)).convert("RGB")
    mask = Image.fromarray((fields.probability >= 0.5).astype(np.uint8) * 255).resize((TILE, TILE))
    edge = np.asarray(mask) > 127
    border = edge & ~(np.roll(edge, 1, 0) & np.roll(edge, -1, 0) & np.roll(edge, 1, 1) & np.roll(edge, -1, 1))
    array = np.asarray(tile).copy()
    array[border] = (0, 255, 0)
    tile = Image.fromarray(array)
    draw = ImageDraw.Draw(tile)
    if fields.box is not None:
        b = fields.box
        draw.rectangle([b.x0 * TILE, b.y0 * TILE, b.x1 * TILE - 1, b.y1 * TILE - 1], outline=(255, 255, 0))
    else:
        draw.rectangle([0, 0, TILE - 1, TILE - 1], outline=(255, 0, 0), width=3)
    draw.rectangle([0, TILE - 14, TILE, TILE], fill=(0, 0, 0))
    draw.text((3, TILE - 13), caption[:26], fill=(255, 255, 255))
    return tile


def grid(tiles: list[Image.Image], columns: int = 10) -> Image.Image:
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * TILE, rows * TILE), (40, 40, 40))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * TILE, (i // columns) * TILE))
    return sheet


def dicom_twin(pixels: np.ndarray) -> bytes:
    """A film as an 8-bit MONOCHROME2 DICOM without a window, the RSNA challenge's format."""
    from io import BytesIO

    from pydicom import Dataset, FileDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset("twin.dcm", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.Modality, ds.PhotometricInterpretation = "CR", "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--masks", default=str(REPO_ROOT.parent / "shared" / "data" / "lung_masks"))
    parser.add_argument("--out", default=str(REPO_ROOT / "docs" / "images" / "lung_outlines.png"))
    args = parser.parse_args(argv)
    masks = Path(args.masks)
    dataset = load_dataset(args.data)
    model = lungs.load_segmenter()

    _, val = masked_frames(dataset, masks, SegConfig())
    probs = predict_probabilities(model, load_pixels(dataset, val, lungs.INPUT_SIZE))
    scores = np.array(full_size_dice(probs, val, masks))
    low = val["low_resolution_source"].to_numpy() == 1
    val_fields = [lungs.judge(p) for p in probs]
    print("| validation images | n | Dice mean | median | 5th percentile | min |\n|---|---|---|---|---|---|")
    for name, part in (("full resolution", scores[~low]), ("224x224 copies", scores[low]), ("all", scores)):
        print(
            f"| {name} | {len(part)} | {part.mean():.4f} | {np.median(part):.4f} | "
            f"{np.quantile(part, 0.05):.4f} | {part.min():.4f} |"
        )

    test = dataset.split("test")
    test_fields = lungs.find_lungs_batch([load_image_file(dataset.absolute(p)).pixels for p in test["path"]], model)
    corpus = []
    for item in ood_images():
        try:
            corpus.append((item.name, load_image(item.data, item.name).pixels))
        except ImageLoadError:
            continue
    corpus_fields = lungs.find_lungs_batch([p for _, p in corpus], model)
    print(
        "\n| images | n | plausible lungs | area q0 q1 q5 q50 q95 q100 | confidence | balance |"
        "\n|---|---|---|---|---|---|"
    )
    for name, found in (
        ("validation (train side)", val_fields),
        ("test films", test_fields),
        ("not chest X-rays", corpus_fields),
    ):
        area, conf, bal = zip(*[features(f) for f in found])
        print(
            f"| {name} | {len(found)} | {np.mean([f.plausible for f in found]):.1%} | {quantiles(area)} | "
            f"{quantiles(conf)} | {quantiles(bal)} |"
        )
    missed = [name for (name, _), f in zip(corpus, corpus_fields) if f.plausible]
    print(f"\nnon-chest-X-rays with 'plausible lungs': {', '.join(missed) or 'none'}")

    full = load_image_file(dataset.absolute(val["path"][np.flatnonzero(~low)[0]])).pixels
    big = np.asarray(Image.fromarray(full).resize((2000, 1600), Image.Resampling.BILINEAR))
    print("\n| image | ms per image (find_lungs, batch of one) |\n|---|---|")
    for name, pixels in ((f"{full.shape[1]}x{full.shape[0]} (dataset)", full), ("2000x1600", big)):
        times = []
        for _ in range(25):
            start = time.perf_counter()
            lungs.find_lungs(pixels, model)
            times.append(time.perf_counter() - start)
        print(f"| {name} | {1000 * np.median(times[5:]):.1f} |")

    order = np.argsort(scores)
    chosen = list(order[:12]) + list(order[12 :: max(1, (len(order) - 12) // 28)][:28])
    tiles = []
    for i in chosen:
        pixels = load_image_file(dataset.absolute(val["path"][i])).pixels
        tiles.append(outline_tile(pixels, val_fields[i], f"val Dice {scores[i]:.3f}"))
    for i in chosen[:6]:
        twin = load_image(dicom_twin(load_image_file(dataset.absolute(val["path"][i])).pixels), "twin.dcm").pixels
        tiles.append(outline_tile(twin, lungs.find_lungs(twin, model), "DICOM twin"))
    for (name, pixels), found in zip(corpus, corpus_fields):
        tiles.append(outline_tile(pixels, found, name))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(tiles).save(out, optimize=True)
    print(f"\n{len(tiles)} outlines -> {out}")


if __name__ == "__main__":
    main()
