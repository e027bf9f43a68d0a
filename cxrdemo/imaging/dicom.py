"""DICOM uploads: parse the header, pick the first frame and turn stored values into display gray.

`cxrdemo.imaging.decode` is the entry point; this module knows DICOM only. Errors are `DicomError`s whose
text is a predicate about the file ("is a DICOM file with no image data"), so the caller can put
the file name in front and keep every message the same shape.

Metadata is built from an allow-list of technical tags: nothing here ever reads patient,
physician or institution tags, so they cannot leak into the UI or logs.

Compressed pixel data is decoded only for the transfer syntaxes in `COMPRESSED_SYNTAXES`, by the
pydicom plugins listed there (pylibjpeg's libjpeg, openjpeg and rle plugins, with Pillow and
pydicom's own RLE decoder as fallbacks); docs/RELIABILITY.md lists what each one was tested on.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

# Plain projection radiographs; anything else (CT, MR, US, OT...) still loads but gets a warning.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR"})
# The automatic window, for values that use a small part of a wide range: ignores hot/dead pixels and
# burnt-in labels.
AUTO_PERCENTILES = (0.5, 99.5)
# Without a window, values are shown over their stored range (BitsStored) when their AUTO_PERCENTILES span
# covers at least this share of it, or when the range is 8 bits or less; below it (a 12-bit detector saved
# in a 16-bit range covers 1/16) they get the automatic window, with a warning. docs/RELIABILITY.md, issue 24.
MIN_RANGE_SHARE = 0.25
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
# Compressed transfer syntaxes we decode (an allow-list): the pydicom plugins that do it, in the order
# pydicom tries them, and the package that provides the first one (named when none is installed).
# Uncompressed syntaxes (implicit/explicit VR, big endian, deflated) need no plugin.
COMPRESSED_SYNTAXES: dict[UID, tuple[tuple[str, ...], str]] = {
    JPEGBaseline8Bit: (("pylibjpeg", "pillow"), "pylibjpeg-libjpeg"),
    JPEGExtended12Bit: (("pylibjpeg", "pillow"), "pylibjpeg-libjpeg"),  # Pillow: 8-bit only
    JPEGLossless: (("pylibjpeg",), "pylibjpeg-libjpeg"),
    JPEGLosslessSV1: (("pylibjpeg",), "pylibjpeg-libjpeg"),
    JPEGLSLossless: (("pylibjpeg",), "pylibjpeg-libjpeg"),
    JPEGLSNearLossless: (("pylibjpeg",), "pylibjpeg-libjpeg"),
    JPEG2000Lossless: (("pylibjpeg", "pillow"), "pylibjpeg-openjpeg"),
    JPEG2000: (("pylibjpeg", "pillow"), "pylibjpeg-openjpeg"),
    HTJ2KLossless: (("pylibjpeg",), "pylibjpeg-openjpeg"),
    HTJ2KLosslessRPCL: (("pylibjpeg",), "pylibjpeg-openjpeg"),
    HTJ2K: (("pylibjpeg",), "pylibjpeg-openjpeg"),
    RLELossless: (("pylibjpeg", "pydicom"), "pylibjpeg-rle"),
}
# Sequential DCT frames (SOF0 baseline, SOF1 extended), whose scans must say Ss=0, Se=63, Ah=Al=0
_SEQUENTIAL_SOF = (0xC0, 0xC1)


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
    """First frame as display-ready uint8: modality LUT, then VOI LUT / window / stored range (`display_range`)."""
    warnings: list[str] = []
    syntax = _syntax(ds)
    if syntax is not None and _is_compressed(syntax):
        _require_decoder(syntax, ds)
    frames = _frame_count(ds)
    if frames > 1:
        warnings.append(f"DICOM file has {frames} frames; showing the first")
        ds.pixel_array_options(index=0)  # decode only the first frame
    arr = _decode(ds, syntax, frames)
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


def _syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)  # absent when a bare dataset was read with force=True
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(syntax).strip()) if syntax and str(syntax).strip() else None


def _require_decoder(syntax: UID, ds: Dataset) -> None:
    """Refuse, naming the syntax, compressions outside the allow-list or whose decoder is missing."""
    name = _clean(syntax.name, 100)
    if syntax not in COMPRESSED_SYNTAXES:
        if not syntax.is_transfer_syntax:  # newer than pydicom (e.g. JPEG XL) or private
            raise DicomError(f"uses transfer syntax {_clean(str(syntax))}, which this app does not know or decode")
        raise DicomError(f"is compressed as {name} ({_clean(str(syntax))}), which this app has no decoder for")
    plugins, package = COMPRESSED_SYNTAXES[syntax]
    try:
        available = set(get_decoder(syntax).available_plugins)
    except NotImplementedError:  # pragma: no cover - every allow-listed syntax has a pydicom decoder
        available = set()
    if syntax == JPEGExtended12Bit and _int(ds.get("BitsStored"), 8) > 8:
        plugins = plugins[:1]  # Pillow refuses 12-bit JPEG; only libjpeg decodes it
    if not available & set(plugins):
        raise DicomError(
            f"is compressed as {name}, which needs the {package} decoder; it is not installed here, "
            "so export the image uncompressed or as PNG"
        )


def _frame_count(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames")
    try:
        frames = int(value or 1)
    except (TypeError, ValueError) as err:
        raise DicomError(f"has an invalid Number of Frames value ({_clean(str(value), 20)!r})") from err
    return max(frames, 1)


def _is_compressed(syntax: UID) -> bool:
    return not syntax.is_transfer_syntax or syntax.is_compressed  # an unknown syntax counts as compressed


def _int(value: object, default: int) -> int:
    try:
        return int(value or default)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default


def _decode(ds: Dataset, syntax: UID | None, frames: int) -> np.ndarray:
    """ds.pixel_array, with failures turned into a message that says why (damaged, or unsupported)."""
    try:
        return ds.pixel_array
    except Exception as err:
        failure = err
    if syntax is None or not _is_compressed(syntax):
        expected, actual = _native_lengths(ds, frames)
        if actual < expected:
            raise DicomError(
                f"looks damaged or incomplete: it holds {actual:,} bytes of image data where its header "
                f"needs {expected:,}"
            ) from failure
        raise failure  # the caller reports it as damaged
    if syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):
        repaired = _repair_sequential_scans(ds, frames)
        if repaired is not None:
            ds.PixelData = repaired
            try:
                return ds.pixel_array
            except Exception:
                pass
    name = _clean(syntax.name, 100)
    if _unsupported(str(failure)):
        raise DicomError(f"uses a {name} variant that the installed decoders do not support") from failure
    raise DicomError(
        f"looks damaged or incomplete: its compressed image data ({name}) could not be decoded"
    ) from failure


def _unsupported(reason: str) -> bool:
    """True when every plugin pydicom tried refused the data as unsupported rather than broken."""
    # pydicom's message: "Unable to decode as exceptions were raised by all available plugins:\n  <plugin>: <why>..."
    failures = reason.split("\n  ")[1:] or [reason]
    return all(
        any(word in f.lower() for word in ("does not support", "not supported", "unsupported")) for f in failures
    )


def _native_lengths(ds: Dataset, frames: int) -> tuple[int, int]:
    """(bytes the header calls for, bytes present) of uncompressed pixel data."""
    try:
        samples = int(ds.get("SamplesPerPixel") or 1)
        values = int(ds.Rows) * int(ds.Columns) * samples * frames
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return 0, 0
    expected = (values + 7) // 8 if bits == 1 else values * ((bits + 7) // 8)
    return expected, len(ds.PixelData)


def _repair_sequential_scans(ds: Dataset, frames: int) -> bytes | None:
    """Re-encapsulated frames whose sequential JPEG scans had their scan parameters set to the
    only values T.81 allows there (Ss=0, Se=63, Ah=Al=0), or None when no frame needed that.

    Some old encoders write Se=0 (pydicom's JPEG-lossy.dcm, from the NEMA WG04 set); IJG libjpeg,
    used by DCMTK and GDCM, warns "Invalid SOS parameters for sequential JPEG" and reads the scan
    as if these were the values; pylibjpeg's libjpeg refuses it. This does what IJG does.
    """
    try:
        fragments = list(generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception:
        return None
    fixed = [_fix_scan_parameters(frame) for frame in fragments]
    if all(f is None for f in fixed):
        return None
    return encapsulate([new if new is not None else old for new, old in zip(fixed, fragments)])


def _fix_scan_parameters(frame: bytes) -> bytes | None:
    data = bytearray(frame)
    if data[:2] != b"\xff\xd8":
        return None
    pos, sequential, changed = 2, False, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None  # not where a marker must be: leave the stream alone
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SEQUENTIAL_SOF:
            sequential = True
        elif marker == 0xDA:  # start of scan: length, Ns, Ns x (Cs, Td/Ta), Ss, Se, Ah/Al
            params = pos + 5 + 2 * data[pos + 4]
            if sequential and params + 3 <= end and bytes(data[params : params + 3]) != b"\x00\x3f\x00":
                data[params : params + 3] = b"\x00\x3f\x00"
                changed = True
            end = _end_of_entropy_data(data, end)
        pos = end
    return bytes(data) if changed else None


def _end_of_entropy_data(data: bytearray, pos: int) -> int:
    """Index of the first marker after entropy-coded data (skipping stuffed 0xFF00 and RSTn)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            pos += 2
            continue
        return pos


def _grayscale(arr: np.ndarray, ds: Dataset, warnings: list[str]) -> tuple[np.ndarray, str]:
    """Stored values -> modality values -> uint8 through the file's VOI, else over the stored range."""
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
            warnings.append("the file's window settings are invalid, so they were not used")
    bits, low, high = _stored_range(ds, arr)
    pixels, window, warning = display_range(values, low, high, bits)
    if warning:
        warnings.append(f"no window in the file and {warning}")
    return pixels, window


def _stored_range(ds: Dataset, arr: np.ndarray) -> tuple[int, float, float]:
    """(BitsStored, lowest, highest) of the modality values the file's stored values can take."""
    bits = min(max(_int(ds.get("BitsStored"), 8 * arr.dtype.itemsize), 1), 32)
    signed = _int(ds.get("PixelRepresentation"), 0) == 1
    first, last = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if ds.get("ModalityLUTSequence") and bits <= 16:  # a LUT need not be monotone: look at every output
        ends = apply_modality_lut(np.arange(first, last + 1), ds)
    else:
        ends = apply_modality_lut(np.array([first, last]), ds)  # a negative slope swaps the ends
    return bits, float(np.min(ends)), float(np.max(ends))


def display_range(values: np.ndarray, low: float, high: float, bits: int | None) -> tuple[np.ndarray, str, str | None]:
    """(uint8 pixels, the window used, a warning or None) for values without a window of their own.

    A file without a window means its stored range, `low`..`high` (torchxrayvision reads DICOMs by their
    bit depth too): stretching a film that already fills it changes its contrast, and with it the models'
    answers (issue 24). So values are shown over that range, unless it is wider than 8 bits (`bits` is None
    for float values) and their AUTO_PERCENTILES span covers under MIN_RANGE_SHARE of it, or they fall
    outside it. Only those get the automatic window, and the warning says why. Also used by
    `cxrdemo.imaging.decode` for 16-bit, 32-bit and float pictures.
    """
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    name = "0 to 1 float" if bits is None else f"{bits}-bit"
    stored = f"stored range {low:g} to {high:g} ({'float' if bits is None else f'{bits} bits'})"
    span_low, span_high = np.percentile(values, AUTO_PERCENTILES)
    share = (span_high - span_low) / (high - low) if high > low else 0.0
    inside = high > low and low <= values.min() and values.max() <= high
    if inside and ((bits is not None and bits <= 8) or share >= MIN_RANGE_SHARE):
        return _to_uint8((values - low) / (high - low)), stored, None
    if inside:
        used = "under 1 %" if share < 0.005 else f"{100 * share:.0f} %"
        reason = f"pixel values use only {used} of the {name} range"
    else:
        reason = f"pixel values fall outside the {name} range"
    percentiles = f"{AUTO_PERCENTILES[0]}-{AUTO_PERCENTILES[1]} percentile"
    warning = f"{reason}, so the contrast was set automatically ({percentiles})"
    return stretch(values, AUTO_PERCENTILES), f"automatic ({percentiles})", warning


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

    The automatic window of `display_range`, and the scaling of VOI LUT output and of colour DICOMs.
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
