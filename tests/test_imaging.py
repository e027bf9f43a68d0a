"""cxrdemo.imaging.decode on the bundled sample and on every file of the strange-upload corpus."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cxrdemo.imaging import decode
from cxrdemo.imaging.decode import ImageLoadError, LoadedImage, display_name, load_image, load_image_file
from cxrdemo.paths import SAMPLE_DIR
from tests.corpus import PATIENT_ID, PATIENT_NAME, CorpusFile, bad_input_corpus, dicom_bytes

# Names only label the parametrized cases and do not depend on the picture; the tests themselves
# build the corpus from the `sample_jpeg_bytes` fixture.
CORPUS_NAMES = [f.name for f in bad_input_corpus(sorted(SAMPLE_DIR.rglob("*.jpeg"))[0].read_bytes())]

# Variants that hold the sample X-ray itself at its own size (no crop, no clipping window).
SAME_PICTURE = [
    "xray.png",
    "xray_16bit.png",
    "xray_palette.png",
    "xray_cmyk.jpeg",
    "xray_rgb_gray.jpeg",
    "xray.bmp",
    "xray.webp",
    "xray_animated.gif",
    "xray_multipage.tiff",
    "xray_float.tiff",
    "xray_named.dcm",
    "dx_patient.dcm",
    "dx_12bit_windowed.dcm",
    "dx_no_rescale.dcm",
    "cr_monochrome1.dcm",
    "dx_multiframe.dcm",
    "dx_rgb.dcm",
    "dx_palette_color.dcm",
    "dx_rle.dcm",
    "dx_jpeg_baseline.dcm",
    "dx_no_preamble.dcm",
    "dicom_named.png",
    "xray_tinted.jpeg",
]


@pytest.fixture(scope="module")
def corpus(sample_jpeg_bytes: bytes) -> dict[str, CorpusFile]:
    return {f.name: f for f in bad_input_corpus(sample_jpeg_bytes)}


@pytest.fixture(scope="module")
def reference(sample_jpeg_bytes: bytes) -> np.ndarray:
    """The sample X-ray as Pillow decodes it: what every faithful variant should resemble."""
    return np.asarray(Image.open(BytesIO(sample_jpeg_bytes)).convert("L"))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def _assert_well_formed(image: LoadedImage) -> None:
    assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 2
    height, width = image.pixels.shape
    if "decoded_at" in image.metadata:  # a large JPEG, decoded at a reduced scale
        assert min(width, height) >= decode.WORKING_SHORT_SIDE and image.original_size[0] > width
    else:
        assert image.original_size == (width, height)
    assert min(width, height) >= decode.MIN_SIDE and width * height <= decode.MAX_PIXELS
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in image.metadata.items())
    assert all(isinstance(w, str) and w and "\n" not in w for w in image.warnings)


def test_corpus_covers_the_required_cases(corpus: dict[str, CorpusFile]) -> None:
    required = {
        "empty.png",
        "truncated.jpeg",
        "truncated.png",
        "notes.png",
        "page.png",
        "bomb_50000x50000.png",
        "xray_16bit.png",
        "xray_rgba.png",
        "xray_la.png",
        "xray_palette.png",
        "xray_cmyk.jpeg",
        "xray_animated.gif",
        "xray_multipage.tiff",
        "xray.bmp",
        "xray.webp",
        "tiny_1x1.png",
        "strip_10000x20.png",
        "no_pixels.dcm",
        "cr_monochrome1.dcm",
        "jpeg_ls.dcm",
        "dx_multiframe.dcm",
        "dx_rgb.dcm",
        "ct_slice.dcm",
        "dx_no_rescale.dcm",
        "dx_patient.dcm",
        "dx_12bit_windowed.dcm",
    }
    assert required <= set(corpus)
    assert len(corpus) == len(CORPUS_NAMES)


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_corpus_file(corpus: dict[str, CorpusFile], name: str) -> None:
    case = corpus[name]
    if not case.readable:
        with pytest.raises(ImageLoadError) as caught:
            load_image(case.data, case.name)
        message = str(caught.value)
        assert message.startswith(case.name) and "\n" not in message and len(message) < 250
        assert "Traceback" not in message and "Error" not in message
        if case.expect_error:
            assert case.expect_error in message
        return
    image = load_image(case.data, case.name)
    _assert_well_formed(image)
    assert image.name == case.name
    if case.expect_warning:
        assert any(case.expect_warning in w for w in image.warnings), image.warnings
    # nothing unexpected: besides the expected one, only the (ubiquitous here) low-resolution warning
    for warning in image.warnings:
        assert (case.expect_warning and case.expect_warning in warning) or warning.startswith("low resolution")


@pytest.mark.parametrize("name", SAME_PICTURE)
def test_variants_show_the_same_picture(corpus: dict[str, CorpusFile], reference: np.ndarray, name: str) -> None:
    """Catches inverted CMYK or MONOCHROME1, a wrong frame, bad scaling of 12/16-bit data."""
    image = load_image(corpus[name].data, name)
    assert image.pixels.shape == reference.shape
    assert _correlation(image.pixels, reference) > 0.97


def test_sample_images_load_from_disk(sample_dir: Path) -> None:
    paths = sorted(sample_dir.rglob("*.jpeg"))
    assert len(paths) >= 50
    for path in paths:
        image = load_image_file(path)
        _assert_well_formed(image)
        assert image.name == path.name and image.source_format == "JPEG"
        assert image.metadata["format"] == "JPEG" and image.metadata["mode"] == "L"
        # 8-bit grayscale JPEGs pass through untouched
        np.testing.assert_array_equal(image.pixels, np.asarray(Image.open(path).convert("L")))


def test_sample_image_from_bytes_matches_file(sample_jpeg_bytes: bytes, reference: np.ndarray) -> None:
    image = load_image(sample_jpeg_bytes, "C:\\Users\\someone\\Desktop\\chest.jpeg")
    assert image.name == "chest.jpeg"
    np.testing.assert_array_equal(image.pixels, reference)


def test_transparent_areas_are_black(corpus: dict[str, CorpusFile], reference: np.ndarray) -> None:
    margin = reference.shape[1] // 8
    for name in ("xray_rgba.png", "xray_la.png"):
        pixels = load_image(corpus[name].data, name).pixels
        assert (pixels[:, :margin] == 0).all()
        np.testing.assert_array_equal(pixels[:, margin:], reference[:, margin:])


def test_colour_photo_is_converted_with_luma(corpus: dict[str, CorpusFile]) -> None:
    rgb = np.asarray(Image.open(BytesIO(corpus["xray_tinted.jpeg"].data)).convert("RGB"), dtype=np.float64)
    expected = rgb @ np.array([0.299, 0.587, 0.114])
    pixels = load_image(corpus["xray_tinted.jpeg"].data, "xray_tinted.jpeg").pixels
    assert np.abs(pixels - expected).max() <= 1.0


def test_exif_orientation_is_applied(corpus: dict[str, CorpusFile], reference: np.ndarray) -> None:
    image = load_image(corpus["xray_exif_rotated.jpeg"].data, "xray_exif_rotated.jpeg")
    assert image.pixels.shape == reference.shape[::-1]
    assert image.metadata["orientation"] == "rotated per EXIF"
    assert _correlation(image.pixels, np.rot90(reference, k=-1)) > 0.97  # orientation 6: turn clockwise


def test_sixteen_bit_png_preserves_intensity_order() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, size=(64, 96), dtype=np.uint16)
    values[0, 0], values[0, 1] = 0, 65535
    buffer = BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    image = load_image(buffer.getvalue(), "ramp.png")
    assert image.metadata["bit_depth"] == "16"
    order = np.argsort(values.ravel(), kind="stable")
    assert (np.diff(image.pixels.ravel()[order].astype(int)) >= 0).all()  # monotone mapping
    assert image.pixels[0, 0] == 0 and image.pixels[0, 1] == 255


def test_twelve_bit_png_uses_the_full_display_range(corpus: dict[str, CorpusFile]) -> None:
    """A 12-bit detector saved as 16-bit PNG must not come out nearly black."""
    pixels = load_image(corpus["xray_16bit.png"].data, "xray_16bit.png").pixels
    assert pixels.max() == 255 and np.percentile(pixels, 50) > 64


def _ramp(low: int, high: int, dtype: type) -> np.ndarray:
    """64 identical rows running from low to high, one step per column block."""
    return np.tile(np.linspace(low, high, 256).round().astype(dtype), (64, 1))


@pytest.mark.parametrize(
    ("photometric", "shape"), [("MONOCHROME1", None), ("MONOCHROME1", "INVERSE"), ("MONOCHROME2", "INVERSE")]
)
def test_inverted_dicoms_are_flipped_exactly_once(photometric: str, shape: str | None) -> None:
    ramp = _ramp(0, 4095, np.uint16)
    mono2 = load_image(dicom_bytes(ramp, bits_stored=12), "m2.dcm").pixels
    data = dicom_bytes(ramp, bits_stored=12, photometric=photometric, presentation_lut_shape=shape)
    inverted = load_image(data, "inverted.dcm").pixels
    assert (np.diff(mono2[0].astype(int)) >= 0).all() and mono2[0, 0] < 10 and mono2[0, -1] > 245
    np.testing.assert_array_equal(inverted, 255 - mono2)


@pytest.mark.parametrize(
    ("dtype", "low", "high", "bits", "slope", "intercept", "center", "width"),
    [
        (np.uint16, 0, 4095, 12, 2.0, -1024.0, 1000.0, 2000.0),  # DX-like, unsigned 12-bit
        (np.int16, -1024, 3071, 16, 1.0, 0.0, 40.0, 400.0),  # CT-like, signed, soft-tissue window
        (np.uint16, 0, 4095, 12, 0.5, 100.0, 700.0, 801.0),
    ],
)
def test_rescale_and_window_follow_the_dicom_formula(
    dtype: type, low: int, high: int, bits: int, slope: float, intercept: float, center: float, width: float
) -> None:
    stored = _ramp(low, high, dtype)
    data = dicom_bytes(stored, bits_stored=bits, rescale=(slope, intercept), window=(center, width))
    image = load_image(data, "windowed.dcm")
    value = stored.astype(np.float64) * slope + intercept
    # PS3.3 C.11.2.1.2.1, LINEAR, mapped onto 0..255
    expected = np.clip((value - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0) * 255.0
    assert np.abs(image.pixels - expected).max() <= 1.0
    assert image.metadata["window"] == f"center {center:g}, width {width:g}"
    assert (image.pixels == 0).any() and (image.pixels == 255).any()


def test_missing_rescale_tags_mean_identity() -> None:
    stored = _ramp(0, 4095, np.uint16)
    plain = load_image(dicom_bytes(stored, bits_stored=12, window=(2048, 4096)), "a.dcm").pixels
    identity = load_image(dicom_bytes(stored, bits_stored=12, window=(2048, 4096), rescale=(1, 0)), "b.dcm").pixels
    np.testing.assert_array_equal(plain, identity)


def test_dicom_without_window_is_shown_over_its_stored_range() -> None:
    """No window: BitsStored sets the range (docs/RELIABILITY.md); values that fill it are not stretched."""
    stored = _ramp(100, 4000, np.uint16)
    image = load_image(dicom_bytes(stored, bits_stored=12), "auto.dcm")
    assert image.metadata["window"] == "stored range 0 to 4095 (12 bits)"
    assert np.abs(image.pixels - stored / 4095 * 255).max() <= 0.5 + 1e-9
    assert image.pixels.min() > 0 and image.pixels.max() < 255  # no percentile stretch to the ends


def test_multiframe_dicom_shows_the_first_frame() -> None:
    stored = _ramp(0, 4095, np.uint16)
    image = load_image(dicom_bytes(stored, bits_stored=12, frames=4), "cine.dcm")
    assert image.metadata["frames"] == "4" and image.pixels.std() > 50  # later frames are blank


def test_patient_tags_never_reach_metadata_or_warnings(corpus: dict[str, CorpusFile]) -> None:
    secrets = [PATIENT_ID, "Doe", "Jane", "19700101", "Corpus General"]
    for case in corpus.values():
        if not (case.readable and case.name.endswith(".dcm")):
            continue
        image = load_image(case.data, case.name)
        text = " ".join([*image.metadata.keys(), *image.metadata.values(), *image.warnings])
        assert not any(secret in text for secret in secrets), case.name
        assert not any(word in key.lower() for key in image.metadata for word in ("patient", "institution", "name"))
    assert PATIENT_NAME.startswith("Doe^Jane")  # the corpus really sets what we look for


def test_decompression_bombs_are_refused_from_the_header(corpus: dict[str, CorpusFile]) -> None:
    for name, claimed in (("bomb_50000x50000.png", "2,500,000,000 pixels"), ("dicom_bomb.dcm", "50000 x 50000")):
        with pytest.raises(ImageLoadError, match="too large to open safely") as caught:
            load_image(corpus[name].data, name)
        assert claimed in str(caught.value) and f"{decode.MAX_PIXELS:,}" in str(caught.value)
    with pytest.raises(ImageLoadError, match="8000 x 6000 = 48,000,000 pixels"):
        load_image(corpus["big_8000x6000.png"].data, "big_8000x6000.png")


def test_failures_leave_pillow_global_settings_alone(corpus: dict[str, CorpusFile]) -> None:
    before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
    for name in ("truncated.jpeg", "truncated.png", "bomb_50000x50000.png"):
        with pytest.raises(ImageLoadError):
            load_image(corpus[name].data, name)
    assert (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS) == before


def test_upload_size_limit(sample_jpeg_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "MAX_UPLOAD_BYTES", len(sample_jpeg_bytes) - 1)
    with pytest.raises(ImageLoadError, match=r"^big\.jpeg is too large .*the limit is"):
        load_image(sample_jpeg_bytes, "big.jpeg")
    path = tmp_path / "big.jpeg"
    path.write_bytes(sample_jpeg_bytes)
    with pytest.raises(ImageLoadError, match=r"^big\.jpeg is too large"):
        load_image_file(path)


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"^gone\.png could not be opened") as caught:
        load_image_file(tmp_path / "gone.png")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("../../etc/scan.png", "scan.png"),
        ("C:\\Users\\dr\\scan.png", "scan.png"),
        ("bad\x1b[31m\nname\r.png", "bad[31mname.png"),
        ("", "upload"),
        ("x" * 300 + ".png", "x" * 75 + "….png"),
    ],
)
def test_display_name_is_sanitised(raw: str, shown: str) -> None:
    assert display_name(raw) == shown
    assert len(display_name(raw)) <= decode.MAX_NAME_CHARS


def test_hostile_name_cannot_break_the_error_line() -> None:
    with pytest.raises(ImageLoadError) as caught:
        load_image(b"<html><body>login</body></html>", "../x\n\x1b[2Jpage.png")
    message = str(caught.value)
    assert message.startswith("x[2Jpage.png is not an image file") and "HTML" in message
    assert "\n" not in message and "\x1b" not in message


def _full_size_film(sample_jpeg_bytes: bytes, size: tuple[int, int], **save: object) -> bytes:
    img = Image.open(BytesIO(sample_jpeg_bytes)).convert("L").resize(size, Image.Resampling.BICUBIC)
    buffer = BytesIO()
    img.save(buffer, format="JPEG", quality=95, **save)
    return buffer.getvalue()


@pytest.mark.parametrize(("size", "decoded"), [((1600, 1200), (800, 600)), ((2048, 2560), (512, 640))])
def test_a_large_jpeg_is_decoded_at_a_reduced_scale_and_answers_the_same(
    sample_jpeg_bytes: bytes, size: tuple[int, int], decoded: tuple[int, int]
) -> None:
    """DCT-scaled decoding keeps the shorter side >= WORKING_SHORT_SIDE and the model's input unchanged."""
    from cxrdemo.imaging.preprocess import Preprocessing, to_input

    data = _full_size_film(sample_jpeg_bytes, size)
    image = load_image(data, "film.jpeg")
    _assert_well_formed(image)
    assert image.original_size == size and image.pixels.shape == decoded[::-1]
    assert image.metadata["decoded_at"] == f"{decoded[0]} x {decoded[1]} px (JPEG scaled decoding)"
    full = np.asarray(Image.open(BytesIO(data)).convert("L"))
    spec = Preprocessing(input_size=224)
    scaled_input, full_input = to_input(image.pixels, spec), to_input(full, spec)
    assert float((scaled_input - full_input).abs().mean()) < 0.02 * float(full_input.std())


def test_a_small_jpeg_is_decoded_whole(sample_jpeg_bytes: bytes) -> None:
    image = load_image(_full_size_film(sample_jpeg_bytes, (1000, 1023)), "film.jpeg")  # shorter side < 1024
    assert image.pixels.shape == (1023, 1000) and "decoded_at" not in image.metadata


def test_a_large_rotated_jpeg_reports_its_upright_size(sample_jpeg_bytes: bytes) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image = load_image(_full_size_film(sample_jpeg_bytes, (1600, 1200), exif=exif.tobytes()), "phone.jpeg")
    assert image.original_size == (1200, 1600) and image.pixels.shape == (800, 600)
    assert image.metadata["orientation"] == "rotated per EXIF"
