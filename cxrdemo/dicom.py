"""DICOM uploads: parse the header, pick the first frame and turn stored values into display gray.

`cxrdemo.imaging` is the entry point; this module knows DICOM only. Errors are `DicomError`s whose
text is a predicate about the file ("is a DICOM file with no image data"), so the caller can put
the file name in front and keep every message the same shape.

Metadata is built from an allow-list of technical tags: nothing here ever reads patient,
physician or institution tags, so they cannot leak into the UI or logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, get_decoder

# Plain projection radiographs; anything else (CT, MR, US, OT...) still loads but gets a warning.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR"})
# Robust auto-window when the file carries none: ignores hot/dead pixels and burnt-in labels.
AUTO_PERCENTILES = (0.5, 99.5)
# tag keyword -> metadata key; an allow-list, so identifying tags can never slip through
_METADATA_TAGS = {
    "Modality": "modality",
    "PhotometricInterpretation": "photometric_interpretation",
    "BitsStored": "bits_stored",
    "Rows": "rows",
    "Columns": "columns",
    "BodyPartExamined": "body_part_examined",
    "ViewPosition": "view_position",
}


class DicomError(ValueError):
    """A DICOM file we cannot show; str() completes the sentence "<file name> ..."."""


class NotDicomError(DicomError):
    """The bytes are not DICOM at all (only raised when reading without the DICM magic)."""


@dataclass
class DicomImage:
    pixels: np.ndarray  # HxW uint8, windowed, bone white
    metadata: dict[str, str]
    warnings: list[str]


def has_magic(data: bytes) -> bool:
    """Part 10 files carry "DICM" after a 128-byte preamble (PS3.10 section 7.1)."""
    return data[128:132] == b"DICM"


def read(data: bytes) -> Dataset:
    """Parse `data`; without the DICM magic, accept it only if it carries image-module tags."""
    magic = has_magic(data)
    try:
        ds = pydicom.dcmread(BytesIO(data), force=not magic)
    except Exception as err:
        if magic:  # a real DICOM file that breaks the parser: damaged, the caller says so
            raise
        raise NotDicomError("is not a DICOM file we can read") from err
    # force=True parses almost any bytes into some dataset; require the image module before trusting it
    if not magic and not ("Rows" in ds and "Columns" in ds):
        raise NotDicomError("is not a DICOM file we can read")
    return ds


def frame_size(ds: Dataset) -> tuple[int, int]:
    """(width, height) of one frame, from the header only."""
    if "PixelData" not in ds:
        raise DicomError("is a DICOM file with no image data (it may be a report or a document)")
    try:
        return int(ds.Columns), int(ds.Rows)
    except (AttributeError, TypeError, ValueError) as err:
        raise DicomError("is a DICOM file without a readable image size") from err


def render(ds: Dataset) -> DicomImage:
    """First frame as display-ready uint8: modality LUT, then VOI LUT / window / auto window."""
    warnings: list[str] = []
    syntax = _syntax(ds)
    if syntax is not None and syntax.is_compressed:
        _require_decoder(syntax)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        warnings.append(f"DICOM file has {frames} frames; showing the first")
        ds.pixel_array_options(index=0)  # decode only the first frame
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith("MONOCHROME"):
        pixels, window = _grayscale(arr, ds, warnings)
        # MONOCHROME1 means low values are white (PS3.3 C.7.6.3.1.2); DX files say it again with
        # Presentation LUT Shape INVERSE (C.8.11.6), so either one flips the image once, bone white
        inverse = str(ds.get("PresentationLUTShape") or "").upper() == "INVERSE"
        if photometric == "MONOCHROME1" or inverse:
            pixels = 255 - pixels
    else:
        pixels, window = _colour_to_gray(arr, ds, photometric), "none (colour image)"
        warnings.append(f"colour DICOM ({photometric}) converted to grayscale")
    warnings += _content_warnings(ds)
    metadata = safe_metadata(ds)
    metadata["frames"] = str(frames)
    metadata["window"] = window
    return DicomImage(pixels=pixels, metadata=metadata, warnings=warnings)


def safe_metadata(ds: Dataset) -> dict[str, str]:
    """Technical, non-identifying facts only (allow-list), all as short printable strings."""
    meta = {"format": "DICOM"}
    for keyword, key in _METADATA_TAGS.items():
        value = ds.get(keyword)
        if value not in (None, ""):
            meta[key] = _clean(str(value))
    syntax = _syntax(ds)
    if syntax is not None:
        meta["transfer_syntax"] = _clean(syntax.name)
    return meta


def _syntax(ds: Dataset) -> pydicom.uid.UID | None:
    meta = getattr(ds, "file_meta", None)  # absent when a bare dataset was read with force=True
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _require_decoder(syntax: pydicom.uid.UID) -> None:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise DicomError(f"uses a compression this app does not support ({_clean(syntax.name)})") from err
    if not decoder.is_available:
        # e.g. JPEG-LS and JPEG Lossless need pylibjpeg-libjpeg or gdcm, which we do not ship
        raise DicomError(
            f"is compressed as {_clean(syntax.name)}, which this app cannot decode; export it uncompressed or as PNG"
        )


def _grayscale(arr: np.ndarray, ds: Dataset, warnings: list[str]) -> tuple[np.ndarray, str]:
    """Stored values -> modality values -> uint8 through the file's VOI, else an auto window."""
    values = apply_modality_lut(arr, ds)  # rescale slope/intercept; identity when the tags are absent
    if ds.get("VOILUTSequence"):
        lut_input = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
        # LUT descriptors often claim 16 bits for 12-bit data, so stretch the LUT output itself
        return stretch(apply_voi(lut_input, ds), (0.0, 100.0)), "VOI LUT from file"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            windowed = apply_windowing(values, ds)
            # the output spans [y_min, y_max], which depend on bits stored and rescale; ask pydicom for the ends
            low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)
            pixels = _to_uint8((windowed - low) / (high - low))
            return pixels, f"center {_first(ds.WindowCenter)}, width {_first(ds.WindowWidth)}"
        except (ValueError, ZeroDivisionError, FloatingPointError):
            warnings.append("the file's window settings are invalid; using an automatic window")
    low_pct, high_pct = AUTO_PERCENTILES
    return stretch(values, AUTO_PERCENTILES), f"automatic ({low_pct}-{high_pct} percentile)"


def _colour_to_gray(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """Colour DICOMs are usually screenshots; ITU-R BT.601 luma, as Pillow's convert("L")."""
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    # pixel_array already converts YBR_* to RGB (pydicom 3 default as_rgb=True)
    luma = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return stretch(luma, (0.0, 100.0)) if arr.dtype != np.uint8 else _to_uint8(luma / 255.0)


def _content_warnings(ds: Dataset) -> list[str]:
    warnings = []
    modality = _clean(str(ds.get("Modality") or "")).upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        warnings.append(f"DICOM modality {modality} is not a plain radiograph")
    body_part = _clean(str(ds.get("BodyPartExamined") or "")).upper()
    if body_part and not any(word in body_part for word in ("CHEST", "THORAX", "LUNG")):
        warnings.append(f"DICOM body part is {body_part}, not chest")
    return warnings


def stretch(values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Linear map of a percentile range to 0..255 (min/max when that range is flat).

    Also used by `cxrdemo.imaging` for 16-bit and float pictures, which need the same treatment.
    """
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    low, high = np.percentile(values, percentiles)
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return _to_uint8((values - low) / (high - low))


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def _first(value: object) -> str:
    """Window tags may hold several alternatives (VM 1-n); pydicom applies the first."""
    first = value[0] if isinstance(value, MultiValue) else value
    try:
        return f"{float(first):g}"
    except (TypeError, ValueError):
        return _clean(str(first))


def _clean(text: str, limit: int = 64) -> str:
    """Tag text for display: printable characters only, bounded length."""
    return "".join(ch for ch in text if ch.isprintable()).strip()[:limit]
