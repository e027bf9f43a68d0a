"""Datasets as one type: the Kermany folder's manifest, RSNA folders, patients and the splits.

Kermany layout `{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg`. `manifest.csv` is used when present; otherwise
the folder is walked and labels, subtypes and patient ids are read from the file names
(`person123_bacteria_456.jpeg`, `IM-0001-0001.jpeg`, `NORMAL2-IM-0095-0001.jpeg`). An RSNA challenge
folder is read by `cxrdemo.data.rsna` (its format) and split here (`load_rsna`); rsna imports nothing of
this module, so the two have no import circle.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdemo.data import rsna
from cxrdemo.paths import data_dir
from cxrdemo.tasks import BINARY, NORMAL, PNEUMONIA, Task

SPLITS = ("train", "test", "val")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)", re.IGNORECASE)
_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)", re.IGNORECASE)


def parse_file_name(name: str, label: str) -> tuple[str, str]:
    """(subtype, patient_id) from an original Kermany file name."""
    stem = Path(name).stem
    if label == PNEUMONIA:
        match = _PERSON.match(stem)
        if match:
            return match.group(2).lower(), match.group(1).lower()
        return "bacteria" if "bacteria" in stem.lower() else "virus", stem
    match = _NORMAL.match(stem)
    return "normal", (match.group(1) if match else stem)


def _walk(root: Path) -> pd.DataFrame:
    rows = []
    for split in SPLITS:
        for label in BINARY.classes:  # the folder names are the class names
            folder = root / split / label
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    subtype, patient = parse_file_name(path.name, label)
                    rows.append(
                        {
                            "path": f"{split}/{label}/{path.name}",
                            "split": split,
                            "label": label,
                            "subtype": subtype,
                            "patient_id": patient,
                            "low_resolution_source": 0,
                        }
                    )
    if not rows:
        raise FileNotFoundError(f"no images under {root}: expected {{train,test,val}}/{{NORMAL,PNEUMONIA}}/*.jpeg")
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Dataset:
    """A manifest of one dataset folder; rows are images, `path` is relative to `root`."""

    root: Path
    frame: pd.DataFrame

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name].reset_index(drop=True)

    def targets(self, frame: pd.DataFrame, task: Task) -> np.ndarray:
        """Class indices of `frame` for `task`."""
        index = {c: i for i, c in enumerate(task.classes)}
        mapped = frame[task.label_column].map(index)
        if mapped.isna().any():
            unknown = sorted(set(frame[task.label_column][mapped.isna()].astype(str)))
            raise ValueError(f"task {task.name!r} has no class for {', '.join(unknown)}")
        # copy: pandas 3 (copy-on-write) hands out read-only views, and torch.from_numpy of those warns
        return mapped.to_numpy(dtype=np.int64, copy=True)

    def absolute(self, relative: str) -> Path:
        """The file behind a manifest path; refuses paths that leave the data folder."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"path {relative!r} is outside the data folder")
        return path

    @property
    def fingerprint(self) -> str:
        """Hash of the manifest rows (paths, splits, labels, file hashes when known)."""
        cols = [c for c in ("path", "split", "label", "subtype", "sha256") if c in self.frame]
        text = self.frame[cols].to_csv(index=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_dataset(root: str | Path | None = None) -> Dataset:
    """Read the dataset at `root` (default: `CXRDEMO_DATA`, then the bundled sample).

    `root` is a Kermany-layout folder (with or without `manifest.csv`) or an RSNA challenge folder
    (`stage_2_train_labels.csv` beside `stage_2_train_images/`, or with the DICOMs beside it).
    """
    root = data_dir(root)
    manifest = root / "manifest.csv"
    challenge = rsna.find(root)
    if challenge is not None:
        return load_rsna(*challenge)
    if manifest.exists():
        frame = pd.read_csv(manifest)
        if "subtype" not in frame or "patient_id" not in frame:
            parsed = [parse_file_name(Path(p).name, lab) for p, lab in zip(frame["path"], frame["label"])]
            frame["subtype"] = [s for s, _ in parsed]
            frame["patient_id"] = [p for _, p in parsed]
        if "low_resolution_source" not in frame:
            frame["low_resolution_source"] = 0
    elif root.is_dir():
        frame = _walk(root)
    else:
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    frame["patient_id"] = frame["patient_id"].astype(str)
    return Dataset(root=root, frame=frame.reset_index(drop=True))


def load_rsna(
    labels_csv: str | Path,
    images_dir: str | Path,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> Dataset:
    """An RSNA challenge folder (`cxrdemo.data.rsna.read_manifest`) as a Dataset with a train/val/test split.

    RSNA ships no official split, so patients are split here: a seeded, label-stratified `patient_split`,
    applied twice (test first, then validation from the rest). `val_fraction` and `test_fraction` are
    shares of all patients. Patients whose DICOM is missing are listed in `frame.attrs["missing"]`.
    """
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction and test_fraction must be >= 0 and sum to less than 1, got {val_fraction}, {test_fraction}"
        )
    root = Path(images_dir).expanduser().resolve()
    frame = rsna.read_manifest(labels_csv, root)
    # Test first, then validation out of the rest, rescaled so both are shares of all patients.
    # The second split gets its own seed so its shuffle is not a replay of the first one's.
    rest, test = patient_split(frame, val_fraction=test_fraction, seed=seed, stratify_column="label")
    val_share = val_fraction / (1 - test_fraction)
    _, val = patient_split(rest, val_fraction=val_share, seed=seed + 1, stratify_column="label")
    frame.loc[frame["patient_id"].isin(test["patient_id"]), "split"] = "test"
    frame.loc[frame["patient_id"].isin(val["patient_id"]), "split"] = "val"
    return Dataset(root=root, frame=frame)


def patient_split(
    frame: pd.DataFrame, *, val_fraction: float = 0.15, seed: int = 0, stratify_column: str = "subtype"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split `frame` into (train, validation) by patient, stratified by each patient's majority class.

    No patient lands on both sides. Patients are shuffled with `seed` inside each stratum and taken
    until the stratum's share of images reaches `val_fraction`.
    """
    rng = np.random.default_rng(seed)
    # each patient's most frequent class (ties: alphabetical), vectorised for RSNA-sized tables
    pairs = frame.groupby(["patient_id", stratify_column]).size().reset_index(name="n")
    pairs = pairs.sort_values(["patient_id", "n", stratify_column], ascending=[True, False, True])
    per_patient = pairs.drop_duplicates("patient_id").set_index("patient_id")[stratify_column]
    counts = frame.groupby("patient_id").size()
    val_patients: set[str] = set()
    for _, patients in per_patient.groupby(per_patient):
        ids = patients.index.to_numpy()
        rng.shuffle(ids)
        target = val_fraction * counts[ids].sum()
        taken = 0
        for pid in ids:
            if taken >= target:
                break
            val_patients.add(pid)
            taken += counts[pid]
    is_val = frame["patient_id"].isin(val_patients)
    return frame[~is_val].reset_index(drop=True), frame[is_val].reset_index(drop=True)


def stratified_subset(frame: pd.DataFrame, n: int, column: str, seed: int) -> pd.DataFrame:
    """About `n` rows of `frame`, keeping the share of each value of `column` (at least 2 of each)."""
    if n >= len(frame):
        return frame
    share = n / len(frame)
    parts = [g.sample(min(len(g), max(2, round(len(g) * share))), random_state=seed) for _, g in frame.groupby(column)]
    return pd.concat(parts).reset_index(drop=True)


def validation_split(
    dataset: Dataset,
    *,
    val_fraction: float = 0.15,
    seed: int = 0,
    subset: int | None = None,
    normal_only: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train side, validation side) of the training split: the one place the validation set is built.

    In this order: NORMAL images only (the autoencoder), a stratified `subset` (`train --subset`), then
    the patient-grouped split. Training, evaluation, k-NN, the OOD statistics and the saliency benchmark
    all call this, so `evaluate --split val` scores exactly the images a model was validated on.
    """
    frame = dataset.split("train")
    if normal_only:
        frame = frame[frame["label"] == NORMAL].reset_index(drop=True)
    if subset:
        frame = stratified_subset(frame, subset, "subtype", seed)
    return patient_split(frame, val_fraction=val_fraction, seed=seed)


def card_validation_split(dataset: Dataset, card: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`validation_split` with the recipe an installed model card records (defaults for cards without one)."""
    training = card.get("training") or {}
    return validation_split(
        dataset,
        val_fraction=training.get("val_fraction", 0.15),
        seed=training.get("seed", 0),
        subset=training.get("subset"),
        normal_only=card.get("kind") == "autoencoder",
    )
