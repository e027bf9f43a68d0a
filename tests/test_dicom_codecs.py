"""Compressed DICOM: every grayscale sample pydicom ships, through `load_image`, the app's and CLI's reader.

Each single-frame MONOCHROME1/2 sample in pydicom's `test_files` folder (found by reading headers,
so a pydicom upgrade adds its new samples here by itself) either decodes to a sensible image or is
refused with a message naming the real reason; "damaged" is said only of the files that are.
Nothing is downloaded and nothing is mocked: the "decoder missing" case runs in a child Python
where pylibjpeg cannot be imported, as on an install without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from cxrdemo.imaging import dicom
from cxrdemo.imaging.decode import ImageLoadError, LoadedImage, load_image
from cxrdemo.paths import REPO_ROOT

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# Samples that really are broken (pydicom's test_files/README.txt says how they were made)
DAMAGED = {
    "MR_truncated.dcm": "pixel data cut short",
    "JPEG2000-embedded-sequence-delimiter.dcm": "4 bytes of the JPEG 2000 stream overwritten",
}
# The same MR slice in every transfer syntax pydicom ships it in; all lossless, so pixel-identical
MR_TWINS = [
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",
]


def _header(path: Path) -> pydicom.Dataset | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # README.txt, JSON, ICC profiles, gzip...
        return None


def _frames(ds: pydicom.Dataset) -> int | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):  # badVR.dcm says "1A"
        return None


def _image_samples() -> list[object]:
    """Every sample with an image module; single-frame grayscale ones run, the rest are skipped."""
    params = []
    for path in sorted(p for p in TEST_FILES.iterdir() if p.is_file()):
        ds = _header(path)
        if ds is None or "Rows" not in ds or "Columns" not in ds or "PhotometricInterpretation" not in ds:
            continue
        photometric = str(ds.PhotometricInterpretation).upper()
        frames = _frames(ds)
        marks = []
        if not photometric.startswith("MONOCHROME"):
            marks.append(pytest.mark.skip(reason=f"colour ({photometric}): see test_colour_samples"))
        elif frames is not None and frames > 1:
            marks.append(pytest.mark.skip(reason=f"{frames} frames: multi-frame is covered by test_imaging.py"))
        params.append(pytest.param(path, id=path.name, marks=marks))
    return params


GRAYSCALE = _image_samples()


def _load(name: str) -> LoadedImage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd tags in some samples
        return load_image((TEST_FILES / name).read_bytes(), name)


def _assert_sensible(pixels: np.ndarray, ds: pydicom.Dataset) -> None:
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    assert pixels.shape == (int(ds.Rows), int(ds.Columns))
    assert pixels.max() > pixels.min(), "a flat image: decoded to nothing"
    assert int(pixels.max()) - int(pixels.min()) >= 128, "uses under half the gray range: bad windowing"


def test_samples_were_found() -> None:
    names = {p.id for p in GRAYSCALE if not p.marks}
    assert len(names) >= 25, names
    assert {"JPEG-lossy.dcm", "JPGExtended.dcm", "MR_small_jpeg_ls_lossless.dcm", *DAMAGED} <= names


@pytest.mark.parametrize("path", GRAYSCALE)
def test_grayscale_sample_decodes_or_says_why(path: Path) -> None:
    data = path.read_bytes()
    header = _header(path)
    assert header is not None
    try:
        image = _load(path.name)
    except ImageLoadError as err:
        message = str(err)
        assert message.startswith(path.name) and "\n" not in message and "Traceback" not in message
        if path.name in DAMAGED:
            assert "damaged or incomplete" in message
            return
        assert "damaged" not in message, message
        # the only other refusal for pydicom's samples is the size check (10 x 10 dose grids...);
        # below it, the pixels must still decode, or get a reason that is not "damaged"
        assert "too small to be an X-ray" in message, message
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                frame = dicom.render(dicom.read(data))
            except dicom.DicomError as inner:
                assert "damaged" not in str(inner), str(inner)
                assert "Number of Frames" in str(inner)  # badVR.dcm: "1A"
                return
        _assert_sensible(frame.pixels, header)
        return
    assert path.name not in DAMAGED, f"{path.name} is {DAMAGED.get(path.name)} but was read"
    _assert_sensible(image.pixels, header)
    assert image.source_format == "DICOM" and image.original_size == (int(header.Columns), int(header.Rows))
    syntax = header.file_meta.TransferSyntaxUID
    assert image.metadata["transfer_syntax"] == syntax.name[:64]


@pytest.mark.parametrize("name", ["JPEG-lossy.dcm", "JPGExtended.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_files_from_the_issue_decode(name: str) -> None:
    image = _load(name)
    assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 2
    assert not any("damaged" in w for w in image.warnings)
    ds = pydicom.dcmread(TEST_FILES / name)
    assert ds.file_meta.TransferSyntaxUID in dicom.COMPRESSED_SYNTAXES


def test_jpeg_lossy_with_invalid_scan_header_reads_as_its_fixed_copy() -> None:
    """JPEG-lossy.dcm writes Se=0 in a sequential scan; pydicom ships JPGExtended.dcm as its fixed version."""
    assert np.array_equal(_load("JPEG-lossy.dcm").pixels, _load("JPGExtended.dcm").pixels)


def test_jpeg_extended_12_bit_shows_the_same_picture_as_its_jpeg2000_copy() -> None:
    """JPGExtended.dcm (NM1_JPLY, 76:1 lossy) and JPEG2000.dcm (NM1_J2KI) come from the same WG04 image."""
    raw = pydicom.dcmread(TEST_FILES / "JPGExtended.dcm").pixel_array
    assert raw.dtype == np.uint16 and 0 < raw.max() < 4096  # 12-bit values, not 8-bit ones scaled up
    extended, j2k = _load("JPGExtended.dcm").pixels, _load("JPEG2000.dcm").pixels
    correlation = np.corrcoef(extended.ravel().astype(float), j2k.ravel().astype(float))[0, 1]
    assert correlation > 0.9


@pytest.mark.parametrize("name", MR_TWINS)
def test_lossless_copies_match_the_uncompressed_original(name: str) -> None:
    reference = _load("MR_small.dcm")
    twin = _load(name)
    assert np.array_equal(twin.pixels, reference.pixels)
    assert twin.metadata["window"] == reference.metadata["window"]


def test_jpeg_ls_near_lossless_decodes_close_to_lossless() -> None:
    """The near-lossless samples are 10 px wide (refused as too small); their pixels still decode right."""
    for name, bits in (("JPEGLSNearLossless_08.dcm", 8), ("JPEGLSNearLossless_16.dcm", 16)):
        ds = pydicom.dcmread(TEST_FILES / name)
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns) and arr.dtype.itemsize * 8 == bits
        assert arr.max() > arr.min()


@pytest.mark.parametrize(
    "name, photometric",
    [
        ("examples_rgb_color.dcm", "RGB"),  # uncompressed
        ("SC_rgb_jpeg_dcmtk.dcm", "YBR_FULL"),  # JPEG baseline
        ("SC_rgb_jpeg_gdcm.dcm", "RGB"),  # JPEG lossless: needed pylibjpeg-libjpeg
        ("SC_rgb_jls_lossy_line.dcm", "RGB"),  # JPEG-LS near-lossless: needed pylibjpeg-libjpeg
        ("examples_jpeg2k.dcm", "YBR_RCT"),  # JPEG 2000
        ("SC_rgb_rle.dcm", "RGB"),  # RLE
    ],
)
def test_colour_samples(name: str, photometric: str) -> None:
    """Colour DICOMs keep the existing behaviour: read, converted to gray, with a warning."""
    image = _load(name)
    assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 2
    assert f"colour DICOM ({photometric}) converted to grayscale" in image.warnings
    assert image.metadata["window"] == "none (colour image)"


def test_lossless_colour_copies_agree() -> None:
    reference = _load("SC_rgb_rle.dcm").pixels
    for name in ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_gdcm_KY.dcm"):
        assert np.array_equal(_load(name).pixels, reference), name


def test_every_allow_listed_syntax_has_its_decoder_installed() -> None:
    """requirements.txt provides the first plugin named for each syntax (what RELIABILITY.md promises)."""
    for syntax, (plugins, package) in dicom.COMPRESSED_SYNTAXES.items():
        available = get_decoder(syntax).available_plugins
        assert plugins[0] in available, f"{syntax.name}: {package} not installed ({available})"


def test_reliability_doc_lists_every_syntax() -> None:
    text = (REPO_ROOT / "docs" / "RELIABILITY.md").read_text()
    for syntax in dicom.COMPRESSED_SYNTAXES:
        assert f"`{syntax}`" in text, syntax.name


def _with_syntax(uid: str) -> bytes:
    """MR_small.dcm relabelled with another transfer syntax (pixel data encapsulated as one frame)."""
    ds = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    written = "1.2.840.10008.1.2.4.100"  # a syntax pydicom can write; same length as the one wanted
    ds.file_meta.TransferSyntaxUID = UID(written)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    assert len(uid) == len(written) and data.count(written.encode()) == 1
    return data.replace(written.encode(), uid.encode())


@pytest.mark.parametrize(
    "uid, expected",
    [
        (
            "1.2.840.10008.1.2.4.100",
            "is compressed as MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100), "
            "which this app has no decoder for",
        ),
        ("1.2.840.10008.1.2.4.110", "uses transfer syntax 1.2.840.10008.1.2.4.110, which this app does not know"),
    ],
)
def test_syntax_without_decoder_is_named(uid: str, expected: str) -> None:
    with pytest.raises(ImageLoadError) as caught:
        load_image(_with_syntax(uid), "video.dcm")
    message = str(caught.value)
    assert message.startswith(f"video.dcm {expected}") and "damaged" not in message


def test_missing_decoder_is_named_not_called_damage() -> None:
    """On an install without pylibjpeg (the old requirements), JPEG-LS and 12-bit JPEG name what is missing."""
    script = f"""
import json, sys, warnings
sys.modules["pylibjpeg"] = None  # as if not installed
warnings.simplefilter("ignore")
from cxrdemo.imaging.decode import ImageLoadError, load_image_file
out = {{}}
for name in ("MR_small_jpeg_ls_lossless.dcm", "JPGExtended.dcm", "MR_small_jp2klossless.dcm"):
    try:
        out[name] = "read " + str(load_image_file({str(TEST_FILES)!r} + "/" + name).pixels.shape)
    except ImageLoadError as err:
        out[name] = str(err)
print(json.dumps(out))
"""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["MR_small_jpeg_ls_lossless.dcm"].startswith(
        "MR_small_jpeg_ls_lossless.dcm is compressed as JPEG-LS Lossless Image Compression, "
        "which needs the pylibjpeg-libjpeg decoder; it is not installed here"
    )
    assert out["JPGExtended.dcm"].startswith(
        "JPGExtended.dcm is compressed as JPEG Extended (Process 2 and 4), which needs the pylibjpeg-libjpeg decoder"
    )
    assert out["MR_small_jp2klossless.dcm"] == "read (64, 64)"  # Pillow still decodes JPEG 2000
    assert not any("damaged" in message for message in out.values())


def test_damaged_jpeg_ls_names_the_compression() -> None:
    """A JPEG-LS stream that the (installed) decoder rejects is damaged, and the message says which codec."""
    data = _with_syntax("1.2.840.10008.1.2.4.100")
    ds = pydicom.dcmread(BytesIO(data))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.80")
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64) + b"\xff\xd9"])
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(ImageLoadError) as caught:
        load_image(buffer.getvalue(), "bad.dcm")
    assert str(caught.value) == (
        "bad.dcm looks damaged or incomplete: its compressed image data "
        "(JPEG-LS Lossless Image Compression) could not be decoded."
    )
