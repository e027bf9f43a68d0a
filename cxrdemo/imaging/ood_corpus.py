"""Images that are not pediatric chest X-rays, taken from what installed packages ship.

Used to measure the out-of-distribution check (`python -m benchmarks.bench_ood`) and by tests.
Categories: photos, documents and text, textures and scenes, other medical images (CT, MR,
fundus, histology, phantom), synthetic patterns. No packaged source has X-rays of other body parts.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SKIMAGE = {
    "photo": [
        "astronaut.png",
        "coffee.png",
        "chelsea.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "camera.png",
        "hubble_deep_field.jpg",
        "moon.png",
        "coins.png",
        "color.png",
        "clock_motion.png",
    ],
    "document": ["page.png", "text.png", "logo.png"],
    "texture": ["brick.png", "grass.png", "gravel.png", "chessboard_GRAY.png", "horse.png"],
    "medical-other": ["retina.jpg", "ihc.png", "cell.png", "microaneurysms.png", "phantom.png"],
}
PYDICOM = [
    "CT_small.dcm",
    "MR_small.dcm",
    "liver_1frame.dcm",
    "rtdose_1frame.dcm",
    "SC_rgb.dcm",
    "JPEG-lossy.dcm",
    "examples_rgb_color.dcm",
    "examples_palette.dcm",
    "SC_rgb_small_odd.dcm",
    "MR_small_RLE.dcm",
]


@dataclass(frozen=True)
class OodImage:
    name: str
    category: str
    data: bytes  # file bytes, as a user would upload them


def _png(array: np.ndarray) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _synthetic() -> Iterator[OodImage]:
    rng = np.random.default_rng(0)
    yield OodImage("noise.png", "synthetic", _png(rng.integers(0, 256, (400, 400), dtype=np.uint8)))
    yield OodImage("gradient.png", "synthetic", _png(np.tile(np.linspace(0, 255, 400, dtype=np.uint8), (400, 1))))
    yield OodImage("white.png", "synthetic", _png(np.full((300, 300), 250, np.uint8)))
    yield OodImage("black.png", "synthetic", _png(np.full((300, 300), 5, np.uint8)))
    for i, words in enumerate(["Discharge summary: patient stable.", "Invoice 2026-11 total 42.00 EUR"]):
        img = Image.new("L", (600, 800), 255)
        draw = ImageDraw.Draw(img)
        for line in range(30):
            draw.text((30, 20 + line * 25), f"{words} line {line}", fill=0)
        yield OodImage(f"document_{i}.png", "document", _png(np.asarray(img)))


def ood_images() -> list[OodImage]:
    """Every available non-chest-X-ray image (sources that are not installed are skipped)."""
    out: list[OodImage] = list(_synthetic())
    try:
        import skimage.data

        root = Path(skimage.data.__file__).parent
        for category, names in SKIMAGE.items():
            out += [OodImage(n, category, (root / n).read_bytes()) for n in names if (root / n).exists()]
    except ImportError:
        pass
    try:
        from pydicom.data import get_testdata_file

        for name in PYDICOM:
            path = get_testdata_file(name)
            if path:
                out.append(OodImage(name, "medical-other", Path(path).read_bytes()))
    except ImportError:
        pass
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data"
        for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
            if (sample / name).exists():
                out.append(
                    OodImage(
                        name,
                        "photo" if name.endswith(("jpg", "Pack.png")) else "document",
                        (sample / name).read_bytes(),
                    )
                )
        mri = sample / "s1045.ima.gz"
        if mri.exists():  # a raw 256x256 16-bit MR slice
            raw = np.frombuffer(gzip.decompress(mri.read_bytes()), np.uint16).astype(np.float32)
            slice_ = raw[: 256 * 256].reshape(256, 256)
            out.append(
                OodImage("mr_s1045.png", "medical-other", _png((255 * slice_ / max(slice_.max(), 1)).astype(np.uint8)))
            )
    except ImportError:
        pass
    return out
