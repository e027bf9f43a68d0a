"""Strange uploads, built in memory from one real chest X-ray, for the imaging, CLI and app tests.

`bad_input_corpus(xray)` returns files a user could plausibly upload: every format and mode we
decode, damaged and disguised files, decompression bombs, and DICOMs in the variants clinics send.
`dicom_bytes(...)` writes a real Part 10 DICOM with pydicom, so tests can check pixel maths exactly.
`film_twins(pixels)` wraps one film as the files a PACS export or an imaging tool makes of it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

PATIENT_NAME = "Doe^Jane^Corpus"
PATIENT_ID = "PID-7734-CORPUS"


@dataclass(frozen=True)
class CorpusFile:
    name: str
    data: bytes
    readable: bool  # True: load_image must succeed
    expect_warning: str | None = None  # substring of one warning, when readable
    expect_error: str | None = None  # substring of the error message, when not readable


def dicom_bytes(
    pixels: np.ndarray,
    *,
    photometric: str | None = None,
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    modality: str = "DX",
    body_part: str = "CHEST",
    frames: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
    encapsulated: list[bytes] | None = None,
    pixel_data: bool = True,
    patient_name: str | None = None,
    patient_id: str | None = None,
    presentation_lut_shape: str | None = None,
    preamble: bool = True,
) -> bytes:
    """A DICOM file holding `pixels` (HxW, or HxWx3 for RGB).

    rescale is (slope, intercept); window is (center, width); frames > 1 adds blank frames after
    `pixels`; photometric "PALETTE COLOR" gets a gray palette; encapsulated replaces the pixel data
    with these already-compressed frames (for `transfer_syntax`); RLE Lossless is compressed for real
    with pydicom's own encoder. patient_name also sets a birth date and an institution, so tests can
    check that none of them leak.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.ViewPosition = "PA"
    ds.PatientName = patient_name or ""
    ds.PatientID = patient_id or ""
    ds.PatientBirthDate = "19700101" if patient_name else ""
    ds.InstitutionName = "Corpus General Hospital" if patient_name else ""
    rgb = pixels.ndim == 3
    photometric = photometric or ("RGB" if rgb else "MONOCHROME2")
    bits = bits_stored or pixels.dtype.itemsize * 8
    stack = pixels if frames == 1 else np.stack([pixels] + [np.zeros_like(pixels)] * (frames - 1))
    ds.set_pixel_data(stack, photometric, bits)
    if photometric == "PALETTE COLOR":  # a gray palette, so the expected picture is known
        ramp = (np.arange(256, dtype="<u2") * 257).tobytes()
        for colour in ("Red", "Green", "Blue"):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", ramp)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{v:g}" for v in rescale)
    if presentation_lut_shape is not None:
        ds.PresentationLUTShape = presentation_lut_shape
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{v:g}" for v in window)
    if transfer_syntax == RLELossless:
        ds.compress(RLELossless)
    elif encapsulated is not None:
        ds.PixelData = encapsulate(encapsulated)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        meta.TransferSyntaxUID = transfer_syntax
    if not pixel_data:
        del ds.PixelData
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data if preamble else data[132:]  # without preamble: starts at the file meta group


# The twins `film_twins` makes, file name -> what the reader must say in metadata["window"]
TWIN_WINDOWS = {
    "cr_8bit_no_window.dcm": "stored range 0 to 255 (8 bits)",
    "cr_12bit_window.dcm": "center 2048, width 4096",
    "cr_12bit_monochrome1_window.dcm": "center 2048, width 4096",
    "cr_12bit_no_window.dcm": "stored range 0 to 4095 (12 bits)",
    "film_16bit.png": "stored range 0 to 65535 (16 bits)",
}


def film_twins(pixels: np.ndarray) -> dict[str, bytes]:
    """One 8-bit film (HxW uint8) as the files a PACS export or an imaging tool makes of it (issue 24).

    CR, explicit VR little endian, keyed by the names in TWIN_WINDOWS: 8-bit MONOCHROME2 without a window
    (as the RSNA challenge's DICOMs), 12-bit with a window spanning 0..4095 as MONOCHROME2 and as
    MONOCHROME1, 12-bit without a window (values filling 0..4095 when the film fills 0..255), and a 16-bit
    PNG holding the pixels times 257. Each one holds the film's own pixels, so it must decode to them.
    """
    twelve = _to_twelve_bit(pixels)
    full_range = (2048.0, 4096.0)  # PS3.3 C.11.2.1.2.1: maps 0 -> 0 and 4095 -> the top, exactly

    def cr(stored: np.ndarray, **options) -> bytes:
        return dicom_bytes(stored, modality="CR", **options)

    twins = {
        "cr_8bit_no_window.dcm": cr(pixels),
        "cr_12bit_window.dcm": cr(twelve, bits_stored=12, window=full_range),
        "cr_12bit_monochrome1_window.dcm": cr(
            4095 - twelve, bits_stored=12, window=full_range, photometric="MONOCHROME1"
        ),
        "cr_12bit_no_window.dcm": cr(twelve, bits_stored=12),
        "film_16bit.png": _save(Image.fromarray(pixels.astype(np.uint16) * 257), "PNG"),
    }
    return twins


def bad_input_corpus(xray: bytes) -> list[CorpusFile]:
    """Every odd upload we know of, with whether it must load and what it must say."""
    return _unreadable(xray) + _readable_pictures(xray) + _readable_dicoms(xray)


def _unreadable(xray: bytes) -> list[CorpusFile]:
    png = _save(Image.open(BytesIO(xray)), "PNG")
    twelve_bit = _twelve_bit(xray)
    jpeg_ls = [b"\xff\xd8\xff\xf7" + bytes(64) + b"\xff\xd9"]
    jpeg2000 = [b"\xff\x4f\xff\x51" + bytes(64)]
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    html = b"<!DOCTYPE html><html><head><title>Login</title></head><body></body></html>"
    files = {
        "empty.png": (b"", "empty"),
        "truncated.jpeg": (xray[: len(xray) // 2], "damaged"),
        "truncated.png": (png[: len(png) // 2], "damaged"),
        "notes.png": (b"Patient notes: film looks fine.\nSee you Tuesday.\n", "plain text"),
        "page.png": (html, "HTML"),
        "report.png": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF"),
        "noise.jpeg": (noise, "not an image file"),
        "text.dcm": (b"not a dicom file, just words\n" * 10, "plain text"),
        "bomb_50000x50000.png": (_png_header_only(50_000, 50_000), "2,500,000,000"),
        "big_8000x6000.png": (_png_header_only(8_000, 6_000), "48,000,000"),
        "tiny_1x1.png": (_save(Image.new("L", (1, 1), 128), "PNG"), "1 x 1"),
        "sliver_400x8.png": (_save(Image.new("L", (400, 8), 128), "PNG"), "400 x 8"),
        "no_pixels.dcm": (dicom_bytes(twelve_bit, bits_stored=12, pixel_data=False), "no image data"),
        "jpeg_ls.dcm": (
            dicom_bytes(twelve_bit, bits_stored=12, transfer_syntax=JPEGLSLossless, encapsulated=jpeg_ls),
            "JPEG-LS",
        ),
        "jpeg2000_damaged.dcm": (
            dicom_bytes(twelve_bit, bits_stored=12, transfer_syntax=JPEG2000Lossless, encapsulated=jpeg2000),
            "damaged",
        ),
        "dicom_bomb.dcm": (_dicom_claiming(dicom_bytes(twelve_bit, bits_stored=12), 50_000, 50_000), "50000 x 50000"),
    }
    return [CorpusFile(name, data, False, expect_error=error) for name, (data, error) in files.items()]


def _readable_pictures(xray: bytes) -> list[CorpusFile]:
    gray = Image.open(BytesIO(xray)).convert("L")
    arr = np.asarray(gray)
    alpha = np.full(arr.shape, 255, np.uint8)
    alpha[:, : arr.shape[1] // 8] = 0  # a transparent margin, as left by image editors
    tinted = np.dstack([arr, (arr * 0.6).astype(np.uint8), (arr * 0.3).astype(np.uint8)])
    inverted = Image.fromarray(255 - arr)
    files = {
        "xray.png": (_save(gray, "PNG"), None),
        # 12-bit values in a 16-bit range: the one case the automatic window is for (docs/RELIABILITY.md)
        "xray_16bit.png": (_save(Image.fromarray(_twelve_bit(xray)), "PNG"), "pixel values use only"),
        "xray_rgba.png": (_save(Image.fromarray(np.dstack([arr, arr, arr, alpha])), "PNG"), "transparent"),
        "xray_la.png": (_save(Image.fromarray(np.dstack([arr, alpha])), "PNG"), "transparent"),
        "xray_palette.png": (_save(gray.convert("P"), "PNG"), None),
        "xray_bilevel.png": (_save(gray.convert("1"), "PNG"), None),
        "xray_cmyk.jpeg": (_save(gray.convert("CMYK"), "JPEG"), None),
        "xray_tinted.jpeg": (_save(Image.fromarray(tinted), "JPEG"), "colour"),
        "xray_rgb_gray.jpeg": (_save(gray.convert("RGB"), "JPEG"), None),
        "xray_animated.gif": (_save(gray, "GIF", save_all=True, append_images=[inverted]), "2 frames"),
        "xray_multipage.tiff": (_save(gray, "TIFF", save_all=True, append_images=[inverted] * 2), "3 pages"),
        "xray_float.tiff": (_save(Image.fromarray(arr.astype(np.float32) / 255.0), "TIFF"), None),
        "xray.bmp": (_save(gray, "BMP"), None),
        "xray.webp": (_save(gray.convert("RGB"), "WEBP", quality=90), None),
        "xray_exif_rotated.jpeg": (_save(gray, "JPEG", exif=_exif_orientation(6)), None),
        "xray_named.dcm": (xray, None),  # a JPEG with the wrong extension
        "strip_10000x20.png": (_save(Image.new("L", (10_000, 20), 90), "PNG"), "unusual shape"),
        "small_64x64.png": (_save(gray.resize((64, 64)), "PNG"), "low resolution"),
    }
    return [CorpusFile(name, data, True, expect_warning=warning) for name, (data, warning) in files.items()]


def _readable_dicoms(xray: bytes) -> list[CorpusFile]:
    arr = np.asarray(Image.open(BytesIO(xray)).convert("L"))
    stored = _twelve_bit(xray)

    def dx(**options) -> bytes:
        return dicom_bytes(stored, bits_stored=12, **options)

    files = {
        "dx_patient.dcm": (dx(patient_name=PATIENT_NAME, patient_id=PATIENT_ID), None),
        "dx_12bit_windowed.dcm": (dx(rescale=(2.0, -1024.0), window=(3000.0, 6000.0)), None),
        "dx_no_rescale.dcm": (dx(), None),
        "cr_monochrome1.dcm": (
            dicom_bytes(4095 - stored, bits_stored=12, photometric="MONOCHROME1", modality="CR"),
            None,
        ),
        "dx_multiframe.dcm": (dx(frames=3), "3 frames"),
        "dx_rgb.dcm": (dicom_bytes(np.dstack([arr, arr, arr])), "colour"),
        "dx_palette_color.dcm": (dicom_bytes(arr, photometric="PALETTE COLOR"), "colour"),
        "ct_slice.dcm": (
            dicom_bytes(stored.astype(np.int16) - 1024, modality="CT", rescale=(1.0, 0.0), window=(40.0, 400.0)),
            "modality CT",
        ),
        "dx_rle.dcm": (dx(transfer_syntax=RLELossless), None),
        "dx_jpeg_baseline.dcm": (dicom_bytes(arr, transfer_syntax=JPEGBaseline8Bit, encapsulated=[xray]), None),
        "dx_no_preamble.dcm": (dx(preamble=False), None),
        "dicom_named.png": (dx(), None),
        "dx_abdomen.dcm": (dx(body_part="ABDOMEN"), "ABDOMEN"),
    }
    return [CorpusFile(name, data, True, expect_warning=warning) for name, (data, warning) in files.items()]


def _twelve_bit(xray: bytes) -> np.ndarray:
    """The X-ray spread over 0..4095, as a 12-bit detector would store it."""
    return _to_twelve_bit(np.asarray(Image.open(BytesIO(xray)).convert("L")))


def _to_twelve_bit(pixels: np.ndarray) -> np.ndarray:
    """0..255 -> 0..4095 by bit replication (v * 4095 / 255 to within 0.06, so it rounds back to v)."""
    arr = pixels.astype(np.uint16)
    return (arr << 4) | (arr >> 4)


def _save(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height gray pixels, with one tiny IDAT (a bomb's fuse)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _dicom_claiming(data: bytes, rows: int, columns: int) -> bytes:
    """Rewrite Rows/Columns in the header (the pixel data stays small)."""
    from pydicom import dcmread

    ds = dcmread(BytesIO(data))
    ds.Rows, ds.Columns = rows, columns
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()
