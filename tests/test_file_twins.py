"""One film, many files (issue 24): the DICOM and 16-bit twins of a JPEG get the JPEG's answer.

Every film of the bundled sample, and 60 test films of the full dataset when it is there, is wrapped as the
five twins of `tests.corpus.film_twins` (8-bit MONOCHROME2 without a window, as the RSNA challenge ships;
12-bit with a full-range window, MONOCHROME2 and MONOCHROME1; 12-bit without a window; 16-bit PNG), written
to a folder and read back with `load_image_file`, the reader `python -m cxrdemo predict` uses.

- Decoding: each twin shows exactly the JPEG's pixels, and its file details name the window used.
- Answers: every installed classifier (k-NN and ensemble included) gives each twin the JPEG's verdict
  (withheld or not, and the class), its probabilities within P_TOLERANCE. The answers come from the
  served models and `Predictor.out_of_distribution`, one batch per model (`_answers`), and
  `test_one_film_through_predict_and_the_command_line` checks that this batch is what
  `Predictor.predict` and the command line give, file by file.
- The other side of the rule (docs/RELIABILITY.md): values that use a small part of a wide range still
  get the automatic window, with a one-line warning.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrdemo.app.diagnosis import file_facts
from cxrdemo.data.dataset import load_dataset
from cxrdemo.imaging import dicom, lungs
from cxrdemo.imaging.decode import LoadedImage, load_image, load_image_file
from cxrdemo.imaging.preprocess import PixelImages
from cxrdemo.inference.predict import Predictor, decided_class
from cxrdemo.paths import REPO_ROOT
from tests.corpus import TWIN_WINDOWS, dicom_bytes, film_twins

N_DATASET_FILMS = 60
P_TOLERANCE = 0.01  # the largest |P difference| a twin may show, per class


@dataclass
class Film:
    path: Path
    jpeg: LoadedImage
    twins: dict[str, LoadedImage]  # twin file name (TWIN_WINDOWS) -> the decoded twin


@dataclass(frozen=True)
class Answer:
    withheld: bool
    label: str
    probabilities: np.ndarray  # (C,), the model's classes


def _films(paths: list[Path], folder: Path) -> list[Film]:
    """Each JPEG and its twins, written into `folder` and read back as the command line reads files."""
    folder.mkdir(parents=True, exist_ok=True)
    films = []
    for i, path in enumerate(paths):
        jpeg = load_image_file(path)
        twins = {}
        for twin, data in film_twins(jpeg.pixels).items():
            file = folder / f"{i:03d}_{twin}"
            file.write_bytes(data)
            twins[twin] = load_image_file(file)
        films.append(Film(path, jpeg, twins))
    return films


@pytest.fixture(scope="module")
def sample_films(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Film]:
    dataset = load_dataset(sample_dir)
    paths = [dataset.absolute(p) for p in sorted(dataset.frame["path"])]
    return _films(paths, tmp_path_factory.mktemp("sample_twins"))


@pytest.fixture(scope="module")
def dataset_films(full_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Film]:
    """N_DATASET_FILMS test films, evenly spaced over the sorted test split (both classes)."""
    dataset = load_dataset(full_data_dir)
    test = sorted(dataset.split("test")["path"])
    picks = np.linspace(0, len(test) - 1, N_DATASET_FILMS).round().astype(int)
    paths = [dataset.absolute(test[i]) for i in picks]
    return _films(paths, tmp_path_factory.mktemp("dataset_twins"))


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor()


def _source(request: pytest.FixtureRequest, source: str) -> list[Film]:
    films = request.getfixturevalue(f"{source}_films")
    assert len(films) >= (N_DATASET_FILMS if source == "dataset" else 50)
    return films


def _answers(predictor: Predictor, pixels: list[np.ndarray]) -> list[dict[str, Answer]]:
    """Every classifier's answer to each image, as `Predictor.predict` decides it, one batch per model.

    The answer depends on the decoded pixels alone (the Predictor reads nothing else of a file), so an
    image identical to one already in the batch shares its answer: a twin that decodes to its JPEG's
    pixels costs nothing, one that does not is run on its own.
    """
    keys = [(p.shape, hashlib.sha256(np.ascontiguousarray(p).tobytes()).digest()) for p in pixels]
    distinct = dict(zip(keys, pixels))
    index = {key: i for i, key in enumerate(distinct)}
    batch = PixelImages(list(distinct.values()))
    with torch.inference_mode():
        fields = batch.lung_fields if lungs.installed() else [None] * len(distinct)
        # the one rule of Predictor._finish: withheld when the out-of-distribution check flags the image
        withheld = [predictor.out_of_distribution(p, f)[0] is True for p, f in zip(batch.pixels, fields)]
        per_model = {}
        for model_id in predictor.model_ids(task=None):
            model = predictor.get(model_id)
            threshold = model.threshold if len(model.classes) == 2 else None
            probabilities = model.probabilities(batch)
            per_model[model_id] = [
                Answer(w, decided_class(p, model.classes, threshold), p) for w, p in zip(withheld, probabilities)
            ]
    return [{model_id: answers[index[key]] for model_id, answers in per_model.items()} for key in keys]


def _difference(answer: Answer, reference: Answer) -> str | None:
    """What differs between two answers, in words; None when they agree."""
    if answer.withheld != reference.withheld:
        return f"withheld {answer.withheld} instead of {reference.withheld}"
    if answer.label != reference.label:
        return f"{answer.label} instead of {reference.label}"
    moved = float(np.abs(answer.probabilities - reference.probabilities).max())
    return f"probabilities moved by {moved:.3f}" if moved > P_TOLERANCE else None


@pytest.mark.parametrize("source", ["sample", "dataset"])
def test_twins_decode_to_the_jpegs_pixels(request: pytest.FixtureRequest, source: str) -> None:
    for film in _source(request, source):
        for twin, image in film.twins.items():
            assert np.array_equal(image.pixels, film.jpeg.pixels), f"{film.path.name} as {twin}"
            assert image.metadata["window"] == TWIN_WINDOWS[twin], (film.path.name, twin)
            assert ("window", TWIN_WINDOWS[twin]) in file_facts(image)  # shown in the file details
            assert image.warnings == film.jpeg.warnings, (film.path.name, twin)  # no window warning


@pytest.mark.parametrize("source", ["sample", "dataset"])
def test_twins_get_the_jpegs_answer_from_every_classifier(
    request: pytest.FixtureRequest, source: str, predictor: Predictor
) -> None:
    films = _source(request, source)
    twins = list(TWIN_WINDOWS)
    pixels = [image.pixels for film in films for image in (film.jpeg, *(film.twins[t] for t in twins))]
    answers = _answers(predictor, pixels)
    assert {"resnet18-binary", "ensemble", "knn-binary"} <= set(answers[0])
    differences = []
    for i, film in enumerate(films):
        reference, *others = answers[i * (1 + len(twins)) : (i + 1) * (1 + len(twins))]
        for twin, answer in zip(twins, others):
            for model_id, model_answer in answer.items():
                found = _difference(model_answer, reference[model_id])
                if found:
                    differences.append(f"{film.path.name} as {twin}, {model_id}: {found}")
    assert not differences, f"{len(differences)} twins answered differently: {differences[:20]}"


def test_one_film_through_predict_and_the_command_line(
    sample_films: list[Film], predictor: Predictor, tmp_path: Path
) -> None:
    """The batch of `_answers` is what `Predictor.predict` answers (for the JPEG and its 8-bit twin, the RSNA
    case), and `python -m cxrdemo predict --json` gives every twin file the JPEG's answer."""
    film = next(f for f in sample_films if f.path.parent.name == "PNEUMONIA")
    images = [film.jpeg, film.twins["cr_8bit_no_window.dcm"]]
    batched = _answers(predictor, [image.pixels for image in images])
    for image, answers in zip(images, batched):
        for model_id, answer in answers.items():
            prediction = predictor.predict(image, model_id, with_subtype=False)  # subtype models are in `answers`
            assert prediction.withheld == answer.withheld and prediction.verdict == (
                "Not assessed" if answer.withheld else answer.label
            ), (image.name, model_id)
            np.testing.assert_allclose(list(prediction.probabilities.values()), answer.probabilities, atol=1e-5)

    files = [tmp_path / "film.jpeg"]
    files[0].write_bytes(film.path.read_bytes())
    for twin, data in film_twins(film.jpeg.pixels).items():
        files.append(tmp_path / twin)
        files[-1].write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-m", "cxrdemo", "predict", "--json", *map(str, files)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reference, *twins = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(twins) == len(TWIN_WINDOWS)
    for answer in twins:
        assert (answer["withheld"], answer["prediction"]) == (reference["withheld"], reference["prediction"]), answer
        for name, p in reference["probabilities"].items():
            assert abs(answer["probabilities"][name] - p) <= P_TOLERANCE, answer


# --- the other side of the rule: values in a small part of a wide range are stretched, with a warning ------


def _ramp(low: int, high: int, dtype: type) -> np.ndarray:
    """64 identical rows running from low to high."""
    return np.tile(np.linspace(low, high, 256).round().astype(dtype), (64, 1))


def _png(values: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    return buffer.getvalue()


def _percentile_stretch(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values, dicom.AUTO_PERCENTILES)
    return np.clip((values - low) / (high - low), 0, 1) * 255


def _one_window_warning(image: LoadedImage) -> str:
    found = [w for w in image.warnings if "contrast was set automatically" in w]
    assert len(found) == 1 and "\n" not in found[0], image.warnings
    return found[0]


@pytest.mark.parametrize(
    ("name", "data", "starts"),
    [
        ("twelve_in_16.png", _png(_ramp(0, 4095, np.uint16)), "pixel values use only 6 % of the 16-bit range"),
        (
            "twelve_in_16.dcm",
            dicom_bytes(_ramp(0, 4095, np.uint16), bits_stored=16),
            "no window in the file and pixel values use only 6 % of the 16-bit range",
        ),
        (
            "nine_in_12.dcm",
            dicom_bytes(_ramp(0, 511, np.uint16), bits_stored=12),
            "no window in the file and pixel values use only 12 % of the 12-bit range",
        ),
    ],
)
def test_a_small_part_of_a_wide_range_gets_the_automatic_window(name: str, data: bytes, starts: str) -> None:
    image = load_image(data, name)
    values = _ramp(0, 4095 if "twelve" in name else 511, np.uint16)
    assert np.abs(image.pixels - _percentile_stretch(values)).max() <= 1.0
    assert image.metadata["window"] == "automatic (0.5-99.5 percentile)"
    warning = _one_window_warning(image)
    assert warning == f"{starts}, so the contrast was set automatically (0.5-99.5 percentile)"


@pytest.mark.parametrize(
    ("name", "values", "window"),
    [
        ("dim_8bit.dcm", _ramp(60, 180, np.uint8), "stored range 0 to 255 (8 bits)"),
        ("half_12bit.dcm", _ramp(0, 2047, np.uint16), "stored range 0 to 4095 (12 bits)"),
        ("half_16bit.png", _ramp(0, 32767, np.uint16), "stored range 0 to 65535 (16 bits)"),
    ],
)
def test_a_range_that_is_used_is_shown_as_stored(name: str, values: np.ndarray, window: str) -> None:
    """8-bit values, and values over at least MIN_RANGE_SHARE of a wider range, are not stretched."""
    top = {"8bit": 255, "12bit": 4095, "16bit": 65535}[name.split("_")[1].split(".")[0]]
    data = _png(values) if name.endswith(".png") else dicom_bytes(values, bits_stored=top.bit_length())
    image = load_image(data, name)
    assert np.abs(image.pixels - values / top * 255).max() <= 0.5 + 1e-9
    assert image.metadata["window"] == window
    assert not [w for w in image.warnings if "contrast" in w or "window" in w]


def test_rescaled_values_are_shown_over_their_rescaled_range() -> None:
    stored = _ramp(0, 4095, np.uint16)
    image = load_image(dicom_bytes(stored, bits_stored=12, rescale=(2.0, -1024.0)), "rescaled.dcm")
    assert image.metadata["window"] == "stored range -1024 to 7166 (12 bits)"
    np.testing.assert_allclose(image.pixels, np.rint(stored / 4095 * 255), atol=1.0)


def test_invalid_window_falls_back_to_the_stored_range() -> None:
    stored = _ramp(0, 4095, np.uint16)
    image = load_image(dicom_bytes(stored, bits_stored=12, window=(2048.0, 0.0)), "zero_width.dcm")
    assert "the file's window settings are invalid, so they were not used" in image.warnings
    assert image.metadata["window"] == "stored range 0 to 4095 (12 bits)"


def test_float_pictures_use_zero_to_one_as_their_range() -> None:
    film = _ramp(0, 255, np.uint8)

    def tiff(values: np.ndarray) -> bytes:
        buffer = BytesIO()
        Image.fromarray(values.astype(np.float32)).save(buffer, format="TIFF")
        return buffer.getvalue()

    unit = load_image(tiff(film / 255.0), "unit.tiff")
    assert np.array_equal(unit.pixels, film) and unit.metadata["window"] == "stored range 0 to 1 (float)"
    wide = load_image(tiff(film * 4.0), "wide.tiff")
    assert _one_window_warning(wide).startswith("pixel values fall outside the 0 to 1 float range")
