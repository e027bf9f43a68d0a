"""Decode any upload (bytes + file name) into a display-ready grayscale image, facts and warnings.

Everything the app or CLI shows a clinician passes through `load_image`: it never writes the
upload to disk, checks sizes before decoding, and turns every failure into one `ImageLoadError`
line that starts with the file name, e.g. "photo.png is not an image file we can read (it looks
like HTML text)."

Choices worth knowing:
- Transparent pixels are composited on black: radiographs have a dark background, so padding
  made transparent by an editor stays dark instead of turning into a bright frame.
- 16/32-bit and float images follow the DICOM rule for files without a window (`dicom.display_range`):
  shown over their bit range (0..1 for float), unless their values use a small part of it (a 12-bit
  detector saved as 16-bit PNG would look black): those are stretched from their 0.5th to 99.5th
  percentile, with a warning. `metadata["window"]` says which.
- EXIF orientation is applied, so a phone photo of a film is upright; `original_size` is the file's
  image size after that rotation.
- A large JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Pillow's `draft`), keeping
  its shorter side at least WORKING_SHORT_SIDE: more than twice any model's input and than the page
  shows, at a third of the decoding time of a full 1600 x 1200 film, and the heatmap overlay is drawn
  at that size too (`python -m benchmarks.bench_inference`). `metadata["decoded_at"]` says so.
- `cxrdemo.imaging.dicom` (and so pydicom) is imported only when a file is DICOM or 16-bit: the training
  path decodes JPEGs through this module and needs neither.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_UPLOAD_BYTES: int = 50 * 1024 * 1024  # larger uploads are refused
MAX_PIXELS: int = 40_000_000  # decompression-bomb limit (width*height), checked before decoding
LOW_RESOLUTION_SIDE: int = 200  # below the 224 px model input: detail is upsampled, not seen
MIN_SIDE = 16  # shorter side below this is refused: nothing to classify
MAX_ASPECT = 3.0  # chest films are close to square; beyond this, warn
WORKING_SHORT_SIDE = 512  # JPEGs whose shorter side is at least twice this are decoded at a reduced scale
MAX_NAME_CHARS = 80

# Pillow formats we accept; others (EPS needs Ghostscript, obscure parsers) are refused by design.
# The JPEG opener also returns MPO images (many phone JPEGs), reported here as JPEG.
PILLOW_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")
SUPPORTED = "JPEG, PNG, BMP, TIFF, WebP, GIF or DICOM"
# Pillow modes above 8 bits (value: bit depth shown in metadata); these go through `dicom.display_range`
_HIGH_DEPTHS = {"I;16": "16", "I;16L": "16", "I;16B": "16", "I;16N": "16", "I": "32", "F": "32 (float)"}
# their value ranges: (low, high, bits; None for float)
_HIGH_RANGES = {"I": (-(2.0**31), 2.0**31 - 1, 32), "F": (0.0, 1.0, None)}
_SIXTEEN_BIT_RANGE = (0.0, 65535.0, 16)
_COLOUR_DELTA = 24  # channel spread (0-255) that counts as visible colour, well above JPEG chroma noise
_COLOUR_FRACTION = 0.01  # share of such pixels that makes an image "noticeably coloured"


class ImageLoadError(ValueError):
    """Anything we cannot read; str(err) is one line, starting with the file name, a clinician understands."""


@dataclass
class LoadedImage:
    pixels: np.ndarray  # HxW uint8 grayscale, display-ready (DICOM already windowed / inverted)
    name: str  # the upload's file name (basename only, sanitised)
    source_format: str  # "JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "DICOM"
    original_size: tuple[int, int]  # (width, height) of the image in the file (pixels may be smaller)
    metadata: dict[str, str] = field(default_factory=dict)  # non-identifying facts only
    warnings: list[str] = field(default_factory=list)  # one-line human warnings


def load_image(data: bytes, name: str) -> LoadedImage:
    """Decode an upload held in memory; raises ImageLoadError with a one-line message."""
    name = display_name(name)
    if not data:
        raise ImageLoadError(f"{name} is empty.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise _upload_too_large(name, len(data))
    try:
        if data[128:132] == b"DICM":  # the Part 10 magic after the 128-byte preamble (PS3.10 7.1)
            image = _load_dicom(data, name)
        elif name.lower().endswith((".dcm", ".dicom")):
            # a DICOM stream without the preamble, or a mislabelled picture
            image = _load_dicom(data, name, pillow_if_not_dicom=True)
        else:
            image = _load_pillow(data, name)
    except ImageLoadError:
        raise
    except Exception as err:
        # Decoders of untrusted bytes fail in many ways (OSError, SyntaxError, struct.error,
        # zlib.error, pydicom's RuntimeError...); the user only needs to know the file is damaged.
        raise ImageLoadError(f"{name} looks damaged or incomplete, so it cannot be read.") from err
    image.warnings += _shape_warnings(*image.original_size)
    return image


def load_image_file(path: str | Path) -> LoadedImage:
    """Read a file from disk (refusing oversized files before reading them) and decode it."""
    path = Path(path)
    name = display_name(path.name)
    try:
        size = path.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise _upload_too_large(name, size)
        data = path.read_bytes()
    except OSError as err:
        raise ImageLoadError(f"{name} could not be opened ({err.strerror or 'read error'}).") from err
    return load_image(data, path.name)


def display_name(name: str) -> str:
    """Basename without control characters, at most MAX_NAME_CHARS (keeping the extension visible)."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = "".join(ch for ch in base if not unicodedata.category(ch).startswith("C")).strip()
    if len(base) > MAX_NAME_CHARS:
        _stem, dot, ext = base.rpartition(".")
        tail = f".{ext}" if dot and len(ext) <= 10 else ""
        base = base[: MAX_NAME_CHARS - len(tail) - 1] + "…" + tail
    return base or "upload"


def _load_dicom(data: bytes, name: str, *, pillow_if_not_dicom: bool = False) -> LoadedImage:
    from cxrdemo.imaging import dicom

    try:
        ds = dicom.read(data)
        width, height = dicom.frame_size(ds)
        _check_dimensions(name, width, height)
        frame = dicom.render(ds)
    except dicom.NotDicomError as err:
        if not pillow_if_not_dicom:
            raise ImageLoadError(_one_line(f"{name} {err}.")) from err
    except dicom.DicomError as err:
        raise ImageLoadError(_one_line(f"{name} {err}.")) from err
    else:
        height, width = frame.pixels.shape
        return LoadedImage(frame.pixels, name, "DICOM", (width, height), frame.metadata, frame.warnings)
    return _load_pillow(data, name)  # not DICOM after all: a mislabelled picture


def _load_pillow(data: bytes, name: str) -> LoadedImage:
    try:
        img = Image.open(BytesIO(data), formats=PILLOW_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # Pillow's limit, inside open()
        claimed = re.search(r"\((\d+) pixels\)", str(err))
        count = f"{int(claimed.group(1)):,} pixels" if claimed else "too many pixels"
        raise ImageLoadError(f"{name} is too large to open safely: {count} (the limit is {MAX_PIXELS:,}).") from err
    except UnidentifiedImageError as err:
        guess = _sniff(data)
        hint = f" (it looks like {guess})" if guess else f"; supported formats are {SUPPORTED}"
        raise ImageLoadError(f"{name} is not an image file we can read{hint}.") from err
    with img:
        fmt = "JPEG" if img.format == "MPO" else str(img.format)
        _check_dimensions(name, *img.size)  # header only: nothing decoded yet
        frames = int(getattr(img, "n_frames", 1))
        depth = _HIGH_DEPTHS.get(img.mode, "1" if img.mode == "1" else "8")
        metadata = {"format": fmt, "mode": img.mode, "bit_depth": depth, "frames": str(frames)}
        warnings = []
        if frames > 1 and img.format != "MPO":  # MPO's extra frames are previews/depth maps, not pages
            unit = "pages" if fmt == "TIFF" else "frames"
            warnings.append(f"file has {frames} {unit}; showing the first")
        file_size = img.size
        if fmt == "JPEG" and min(file_size) >= 2 * WORKING_SHORT_SIDE:
            img.draft(None, (WORKING_SHORT_SIDE, WORKING_SHORT_SIDE))
            metadata["decoded_at"] = f"{img.size[0]} x {img.size[1]} px (JPEG scaled decoding)"
        img.load()  # raises on truncated data (LOAD_TRUNCATED_IMAGES stays off)
        upright = ImageOps.exif_transpose(img)
        if upright.size != img.size:
            metadata["orientation"] = "rotated per EXIF"
            file_size = file_size[::-1]
        pixels = _to_gray(upright, metadata, warnings)
    return LoadedImage(pixels, name, fmt, file_size, metadata, warnings)


def _to_gray(img: Image.Image, metadata: dict[str, str], warnings: list[str]) -> np.ndarray:
    """Any Pillow mode -> HxW uint8; high bit depths as DICOMs without a window, alpha composited on black."""
    if img.mode in _HIGH_DEPTHS:
        from cxrdemo.imaging.dicom import display_range

        low, high, bits = _HIGH_RANGES.get(img.mode, _SIXTEEN_BIT_RANGE)
        pixels, metadata["window"], warning = display_range(np.asarray(img), low, high, bits)
        if warning:
            warnings.append(warning)
        return pixels
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.mode else "RGB")  # 1, CMYK, YCbCr, PA, La, RGBa...
    alpha = None
    if img.mode in ("LA", "RGBA"):
        alpha = np.asarray(img.getchannel("A"), dtype=np.float64) / 255.0
        img = img.convert(img.mode[:-1])
        if (alpha < 1.0).any():
            warnings.append("image has transparent areas; they are shown as black")
    if img.mode == "RGB":
        rgb = np.asarray(img, dtype=np.int16)
        spread = rgb.max(axis=2) - rgb.min(axis=2)
        if np.mean(spread > _COLOUR_DELTA) > _COLOUR_FRACTION:
            warnings.append("colour image converted to grayscale")
        img = img.convert("L")  # ITU-R BT.601 luma
    gray = np.asarray(img, dtype=np.uint8)
    if alpha is not None:
        gray = np.rint(gray * alpha).astype(np.uint8)
    return gray


def _check_dimensions(name: str, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageLoadError(
            f"{name} is too large to open safely: {width} x {height} = {width * height:,} pixels "
            f"(the limit is {MAX_PIXELS:,})."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageLoadError(f"{name} is too small to be an X-ray: {width} x {height} pixels.")


def _shape_warnings(width: int, height: int) -> list[str]:
    warnings = []
    if max(width, height) / min(width, height) > MAX_ASPECT:
        warnings.append(f"unusual shape ({width} x {height}); chest X-rays are roughly square")
    if min(width, height) < LOW_RESOLUTION_SIDE:
        warnings.append(f"low resolution ({width} x {height}); results may be less reliable")
    return warnings


def _sniff(data: bytes) -> str | None:
    """A plain-words guess at what a non-image upload is, for the error message."""
    head = data[:2048]
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive or Office document"
    try:
        text = head.decode("utf-8").lower()
    except UnicodeDecodeError:
        return None
    if "<html" in text or "<!doctype" in text or "<head" in text or "<body" in text:
        return "HTML text"
    if "<svg" in text:
        return "an SVG drawing, which is not supported"
    printable = sum(ch.isprintable() or ch.isspace() for ch in text)
    return "plain text" if printable >= 0.95 * len(text) else None


def _upload_too_large(name: str, size: int) -> ImageLoadError:
    return ImageLoadError(f"{name} is too large ({_megabytes(size)}; the limit is {_megabytes(MAX_UPLOAD_BYTES)}).")


def _megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size < 10 * 1024 * 1024 else f"{size / 1024 / 1024:.0f} MB"


def _one_line(text: str) -> str:
    return " ".join(text.split())
