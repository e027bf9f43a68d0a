"""The RSNA adapter on a small folder in the challenge's own format: real DICOMs made from sample X-rays."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cxrdemo.data import rsna as rsna_format
from cxrdemo.data.dataset import SPLITS, Dataset, load_dataset, load_rsna
from cxrdemo.paths import REPO_ROOT
from cxrdemo.tasks import get_task
from tests.rsna_fixtures import LABEL_COLUMNS, chest_pixels, write_dicom, write_labels

N_NORMAL, N_PNEUMONIA = 24, 16


def _pid(i: int) -> str:
    """A stable id shaped like RSNA's (a UUID)."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"rsna-test-{i}"))


@pytest.fixture(scope="module")
def rsna(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> dict:
    """24 normal and 16 pneumonia patients (1 to 3 boxes), plus one CSV patient whose DICOM is missing."""
    root = tmp_path_factory.mktemp("rsna")
    images = root / "stage_2_train_images"
    images.mkdir()
    jpegs = sorted((sample_dir / "train" / "NORMAL").glob("*.jpeg"))
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    pixels: dict[str, np.ndarray] = {}
    for i in range(N_NORMAL + N_PNEUMONIA):
        pid = _pid(i)
        n = 0 if i < N_NORMAL else 1 + i % 3  # the first pneumonia patient has two boxes, the next three
        boxes[pid] = [(100.0 + 10 * b, 200.0, 150.0, 300.0) for b in range(n)]
        pixels[pid] = chest_pixels(jpegs[i % len(jpegs)])
        write_dicom(images / f"{pid}.dcm", pixels[pid], pid)
    missing = _pid(999)
    boxes[missing] = [(264.0, 152.0, 213.0, 379.0)]
    labels = root / "stage_2_train_labels.csv"
    write_labels(labels, boxes)
    return {"labels": labels, "images": images, "boxes": boxes, "pixels": pixels, "missing": missing}


@pytest.fixture(scope="module")
def dataset(rsna: dict) -> Dataset:
    return load_rsna(rsna["labels"], rsna["images"], seed=0)


def test_fixture_is_in_the_challenge_format(rsna: dict) -> None:
    frame = pd.read_csv(rsna["labels"])
    assert list(frame.columns) == LABEL_COLUMNS
    normal_rows = frame[frame["Target"] == 0]
    assert len(normal_rows) == N_NORMAL and normal_rows[["x", "y", "width", "height"]].isna().all().all()
    per_patient = frame.groupby("patientId").size()
    assert {1, 2, 3} <= set(per_patient)  # one row per box for pneumonia patients


def test_manifest_has_one_row_per_patient_with_the_shared_columns(dataset: Dataset) -> None:
    frame = dataset.frame
    for column in ("path", "split", "label", "subtype", "patient_id", "n_boxes", "low_resolution_source"):
        assert column in frame
    assert frame["patient_id"].is_unique and len(frame) == N_NORMAL + N_PNEUMONIA
    assert (frame["path"] == frame["patient_id"] + ".dcm").all()
    assert (frame["low_resolution_source"] == 0).all()
    targets = dataset.targets(frame, get_task("binary"))
    assert targets.sum() == N_PNEUMONIA


def test_labels_follow_the_any_target_rule_and_boxes_are_counted(dataset: Dataset, rsna: dict) -> None:
    frame = dataset.frame.set_index("patient_id")
    for pid, boxes in rsna["boxes"].items():
        if pid == rsna["missing"]:
            continue
        assert frame.loc[pid, "label"] == ("PNEUMONIA" if boxes else "NORMAL")
        assert frame.loc[pid, "n_boxes"] == len(boxes)
        assert frame.loc[pid, "subtype"] == ("unknown" if boxes else "normal")


def test_subtype_task_is_not_available_on_rsna(dataset: Dataset) -> None:
    subtypes = dataset.frame.groupby("label")["subtype"].unique().map(list).to_dict()
    assert subtypes == {"NORMAL": ["normal"], "PNEUMONIA": ["unknown"]}
    assert "unknown" not in get_task("subtype").classes


def test_splits_are_disjoint_nonempty_and_stratified(dataset: Dataset) -> None:
    patients = {name: set(dataset.split(name)["patient_id"]) for name in SPLITS}
    assert set(dataset.frame["split"]) == set(SPLITS)
    assert sum(len(p) for p in patients.values()) == len(dataset.frame)
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"])
    assert not patients["val"] & patients["test"]
    for name in SPLITS:
        # patient_split takes at least one patient per label stratum, so every split has both classes
        assert set(dataset.split(name)["label"]) == {"NORMAL", "PNEUMONIA"}, name
    assert len(dataset.split("train")) > len(dataset.split("val")) + len(dataset.split("test"))


def test_missing_dicom_is_dropped_reported_and_logged_once(rsna: dict, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cxrdemo.data.rsna"):
        dataset = load_rsna(rsna["labels"], rsna["images"])
    assert dataset.frame.attrs["missing"] == [rsna["missing"]]
    assert rsna["missing"] not in set(dataset.frame["patient_id"])
    warnings = [r for r in caplog.records if r.name == "cxrdemo.data.rsna"]
    assert len(warnings) == 1 and warnings[0].getMessage().startswith("1 patients")


def test_every_path_is_a_readable_dicom(dataset: Dataset, rsna: dict) -> None:
    for pid, relative in zip(dataset.frame["patient_id"], dataset.frame["path"]):
        path = dataset.absolute(relative)
        assert path.is_file() and path.parent == rsna["images"].resolve()
        ds = pydicom.dcmread(path)
        assert ds.PatientID == pid and ds.Modality == "CR" and ds.ViewPosition == "PA"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        np.testing.assert_array_equal(ds.pixel_array, rsna["pixels"][pid])
        assert ds.pixel_array.dtype == np.uint8 and ds.pixel_array.shape == (64, 64)


def test_seeded_split_is_reproducible(dataset: Dataset, rsna: dict) -> None:
    again = load_rsna(rsna["labels"], rsna["images"], seed=0)
    pd.testing.assert_frame_equal(again.frame, dataset.frame)
    assert again.fingerprint == dataset.fingerprint
    other = load_rsna(rsna["labels"], rsna["images"], seed=1)
    assert not other.frame["split"].equals(dataset.frame["split"])


@pytest.mark.parametrize(
    "header",
    [
        "patientId,class",  # stage_2_detailed_class_info.csv, the file most often passed by mistake
        "patientId,x,y,width,height",
        "patient_id,x,y,width,height,Target",
    ],
)
def test_wrong_header_names_the_expected_columns(tmp_path: Path, rsna: dict, header: str) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{header}\n{rsna['missing']},Normal\n")
    with pytest.raises(ValueError, match="patientId,x,y,width,height,Target") as error:
        load_rsna(labels, rsna["images"])
    assert "\n" not in str(error.value)


def test_target_other_than_zero_or_one_is_refused(tmp_path: Path, rsna: dict) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{','.join(LABEL_COLUMNS)}\n{_pid(0)},,,,,2\n")
    with pytest.raises(ValueError, match="line 2: Target must be 0 or 1"):
        load_rsna(labels, rsna["images"])


@pytest.mark.parametrize("patient_id", ["../outside", "sub/dir", "..\\outside", ".."])
def test_patient_id_that_leaves_the_folder_is_refused(tmp_path: Path, rsna: dict, patient_id: str) -> None:
    (tmp_path / "outside.dcm").write_bytes(b"")  # a target one level up from the image folder
    images = tmp_path / "images"
    images.mkdir()
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{','.join(LABEL_COLUMNS)}\n{patient_id},,,,,0\n")
    with pytest.raises(ValueError, match="not a plain file name"):
        load_rsna(labels, images)


def test_fractions_are_checked(rsna: dict) -> None:
    with pytest.raises(ValueError, match="sum to less than 1"):
        load_rsna(rsna["labels"], rsna["images"], val_fraction=0.5, test_fraction=0.5)


def test_the_format_reader_leaves_the_split_to_dataset(rsna: dict) -> None:
    """`rsna.read_manifest` knows the challenge's format only: every patient is in "train" until `load_rsna`."""
    frame = rsna_format.read_manifest(rsna["labels"], rsna["images"])
    assert set(frame["split"]) == {"train"} and frame.attrs["missing"] == [rsna["missing"]]
    split = load_rsna(rsna["labels"], rsna["images"]).frame
    pd.testing.assert_frame_equal(frame.drop(columns="split"), split.drop(columns="split"))


def test_challenge_folders_are_found_in_both_layouts(rsna: dict, tmp_path: Path) -> None:
    """DICOMs in `stage_2_train_images/` or beside the labels; a folder with a manifest is not RSNA."""
    root = rsna["labels"].parent
    assert rsna_format.find(root) == (rsna["labels"], rsna["images"])
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / rsna_format.LABELS).write_bytes(rsna["labels"].read_bytes())
    for path in sorted(rsna["images"].glob("*.dcm"))[:12]:
        (flat / path.name).write_bytes(path.read_bytes())
    assert rsna_format.find(flat) == (flat / rsna_format.LABELS, flat)
    loaded = load_dataset(flat)
    assert len(loaded.frame) == 12 and loaded.root == flat.resolve()
    (flat / "manifest.csv").write_text("path,split,label\n")
    assert rsna_format.find(flat) is None


def test_rsna_folder_trains_and_evaluates_from_the_command_line(rsna: dict, tmp_path: Path) -> None:
    """`--data` pointing at an RSNA folder: `train` decodes its DICOMs, `evaluate` scores its test patients."""
    root = rsna["labels"].parent
    loaded = load_dataset(root)
    assert len(loaded.frame) == N_NORMAL + N_PNEUMONIA and set(loaded.frame["split"]) == set(SPLITS)
    env = {
        **os.environ,
        "CXRDEMO_CACHE": str(tmp_path / "cache"),
        "CXRDEMO_WEIGHTS": str(tmp_path / "weights"),
        "OMP_NUM_THREADS": "1",
    }
    run = tmp_path / "run"
    train = [sys.executable, "-m", "cxrdemo", "train", "--arch", "cnn4", "--data", str(root), "--out", str(run)]
    train += ["--epochs", "1", "--input-size", "48", "--batch-size", "8", "--device", "cpu"]
    done = subprocess.run(train, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    card = json.loads((run / "card.json").read_text())
    assert (
        card["data"]["dataset"] == loaded.root.name
        and card["metrics"]["test"]["n"] == (loaded.frame["split"] == "test").sum()
    )
    promote = [sys.executable, "-m", "cxrdemo", "promote", str(run), "--as", "cnn4-rsna"]
    assert subprocess.run(promote, cwd=REPO_ROOT, env=env, capture_output=True, timeout=120).returncode == 0
    evaluate = [sys.executable, "-m", "cxrdemo", "evaluate", "--model", "cnn4-rsna", "--data", str(root), "--json"]
    scored = subprocess.run(evaluate, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr[-2000:]
    result = json.loads(scored.stdout)
    assert result["n"] == card["metrics"]["test"]["n"]
    assert result["metrics"]["accuracy"]["value"] == pytest.approx(
        card["metrics"]["test"]["accuracy"]["value"], abs=1e-9
    )


def test_train_promote_and_evaluate_on_rsna_from_the_command_line(rsna: dict, dataset: Dataset, tmp_path: Path) -> None:
    """`--data RSNA_DIR` through the real CLI: a tiny cnn4 trains on the RSNA folder, is promoted, and
    `evaluate` scores the adapter's own test split (its patients, decoded from DICOM like uploads)."""
    root = rsna["labels"].parent
    env = {**os.environ, "CXRDEMO_WEIGHTS": str(tmp_path / "weights"), "CXRDEMO_CACHE": str(tmp_path / "cache")}
    env["OMP_NUM_THREADS"] = "1"
    run = tmp_path / "run"

    def cli(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "cxrdemo", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        return result

    train = ["train", "--arch", "cnn4", "--task", "binary", "--data", str(root), "--out", str(run)]
    cli(*train, "--epochs", "1", "--input-size", "48", "--batch-size", "8", "--device", "cpu")
    card = json.loads((run / "card.json").read_text())
    assert card["data"]["n_train"] + card["data"]["n_val"] == len(dataset.split("train"))
    cli("promote", str(run))
    result = json.loads(
        cli("evaluate", "--model", "cnn4-binary", "--split", "test", "--data", str(root), "--json").stdout
    )
    assert result["n"] == len(dataset.split("test")) and 0.0 <= result["metrics"]["roc_auc"]["value"] <= 1.0
