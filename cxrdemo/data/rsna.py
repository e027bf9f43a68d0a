"""The RSNA Pneumonia Detection Challenge's files: where they are in a folder, and its labels as a manifest.

Input is the challenge's `stage_2_train_labels.csv` (one row per box; a patient without pneumonia has
one row with `Target=0` and empty box fields) and its flat folder of `<patientId>.dcm` files. The
manifest has one row per patient: `label` is PNEUMONIA when any of the patient's rows has `Target=1`,
`n_boxes` counts those rows. RSNA ships no official split, so every row is in "train" here;
`cxrdemo.data.dataset.load_rsna` splits the patients and makes the `Dataset`. This module knows only
the challenge's format and imports nothing of `dataset`, so there is no import circle between them.

Only the binary task exists on RSNA: its labels say nothing about bacterial versus viral pneumonia,
so `subtype` is "unknown" for every PNEUMONIA patient, a value that is not one of the subtype task's
classes. Callers must not train or evaluate the subtype task on this manifest.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from cxrdemo.tasks import get_task

LABELS = "stage_2_train_labels.csv"
IMAGES = "stage_2_train_images"
COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
UNKNOWN_SUBTYPE = "unknown"  # RSNA labels do not distinguish bacterial from viral pneumonia
_NORMAL, _PNEUMONIA = get_task("binary").classes
_NORMAL_SUBTYPE = get_task("subtype").classes[0]

log = logging.getLogger(__name__)


def _read_labels(labels_csv: Path) -> pd.DataFrame:
    """The box table, after checking the header and the Target values."""
    header = list(pd.read_csv(labels_csv, nrows=0, encoding="utf-8-sig").columns)
    if header != list(COLUMNS):
        raise ValueError(
            f"{labels_csv} is not an RSNA labels file: expected columns {','.join(COLUMNS)}, got {','.join(header)}"
        )
    boxes = pd.read_csv(labels_csv, dtype={"patientId": str}, keep_default_na=False, encoding="utf-8-sig")
    if boxes.empty:
        raise ValueError(f"{labels_csv} lists no patients")
    bad = ~boxes["Target"].astype(str).isin(["0", "1"])
    if bad.any():
        row = boxes.index[bad][0] + 2  # 1-based, after the header line
        raise ValueError(f"{labels_csv} line {row}: Target must be 0 or 1, got {boxes['Target'][bad].iloc[0]!r}")
    boxes["Target"] = boxes["Target"].astype(int)
    return boxes


def _check_patient_id(patient_id: str, root: Path) -> None:
    """Refuse ids that are not a plain file name in the flat image folder (same rule as `Dataset.absolute`)."""
    if patient_id in ("", ".", "..") or "/" in patient_id or "\\" in patient_id or "\0" in patient_id:
        raise ValueError(f"patient id {patient_id!r} is not a plain file name; it would leave {root}")


def find(root: Path) -> tuple[Path, Path] | None:
    """(labels CSV, image folder) when `root` is an RSNA challenge folder without a manifest, else None.

    The DICOMs are in `stage_2_train_images/` beside the labels, or beside the labels themselves.
    """
    if (root / "manifest.csv").exists() or not (root / LABELS).exists():
        return None
    images = root / IMAGES
    return root / LABELS, images if images.is_dir() else root


def read_manifest(labels_csv: str | Path, images_dir: str | Path) -> pd.DataFrame:
    """One row per patient with a DICOM in `images_dir`, all in the "train" split; `path` is relative to it.

    Patients whose DICOM is missing are dropped and listed in `frame.attrs["missing"]`. Raises ValueError
    for a wrong CSV header, a Target other than 0/1, or a patient id that is not a plain file name.
    """
    labels_csv = Path(labels_csv)
    root = Path(images_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"RSNA image folder {root} does not exist")

    boxes = _read_labels(labels_csv)
    per_patient = boxes.groupby("patientId", sort=False)["Target"].agg(["max", "sum"])
    for patient_id in per_patient.index:
        _check_patient_id(patient_id, root)

    # One directory listing instead of a stat per patient: the full folder has 26,684 files.
    present = {entry.name for entry in os.scandir(root) if entry.is_file()}
    found = [f"{pid}.dcm" in present for pid in per_patient.index]
    missing = [pid for pid, ok in zip(per_patient.index, found) if not ok]
    per_patient = per_patient[found]
    if missing:
        log.warning("%d patients in %s have no DICOM in %s; dropped", len(missing), labels_csv.name, root)
    if per_patient.empty:
        raise FileNotFoundError(f"none of the patients in {labels_csv} has a <patientId>.dcm in {root}")

    sick = per_patient["max"] == 1
    frame = pd.DataFrame(
        {
            "path": [f"{pid}.dcm" for pid in per_patient.index],
            "split": "train",
            "label": sick.map({True: _PNEUMONIA, False: _NORMAL}).to_numpy(),
            "subtype": sick.map({True: UNKNOWN_SUBTYPE, False: _NORMAL_SUBTYPE}).to_numpy(),
            "patient_id": per_patient.index.to_numpy(dtype=str),
            "n_boxes": per_patient["sum"].to_numpy(dtype=int),
            "low_resolution_source": 0,
        }
    )
    frame.attrs["missing"] = missing
    return frame
