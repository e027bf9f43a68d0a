"""Dataset statistics (`cxrdemo.evaluation.explore`): README numbers on the full dataset, filters on the sample."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cxrdemo.data.dataset import load_dataset
from cxrdemo.evaluation import explore
from cxrdemo.models.registry import sha256_file


@pytest.fixture(scope="module")
def sample(sample_dir: Path):
    return load_dataset(sample_dir)


@pytest.fixture(scope="module")
def full(full_data_dir: Path):
    return load_dataset(full_data_dir)


# --- the full dataset reproduces its README ---------------------------------------------------------


@pytest.mark.full_data
def test_class_counts_match_readme(full):
    counts = explore.class_counts(full.frame).set_index(["split", "label"])["images"].to_dict()
    assert counts == {
        ("train", "NORMAL"): 1341,
        ("train", "PNEUMONIA"): 3875,
        ("test", "NORMAL"): 234,
        ("test", "PNEUMONIA"): 390,
        ("val", "NORMAL"): 8,
        ("val", "PNEUMONIA"): 8,
    }
    assert explore.class_counts(full.frame)["split"].drop_duplicates().tolist() == ["train", "test", "val"]
    subtypes = explore.subtype_counts(full.frame).groupby("subtype")["images"].sum().to_dict()
    assert subtypes == {"bacteria": 2780, "virus": 1493, "normal": 1583}


@pytest.mark.full_data
def test_resolution_sources_match_readme(full):
    low = explore.filter_frame(full.frame, resolution="low")
    assert len(low) == 3577 and set(low["split"]) == {"train"}
    assert low["label"].value_counts().to_dict() == {"PNEUMONIA": 2667, "NORMAL": 910}
    full_train = explore.filter_frame(full.frame, splits=["train"], resolution="full")
    assert full_train["label"].value_counts().to_dict() == {"PNEUMONIA": 1208, "NORMAL": 431}
    sizes = explore.size_table(low)
    assert (sizes[["width", "height", "source_width", "source_height"]] == 224).all().all()
    assert set(sizes["resolution"]) == {"low"}


@pytest.mark.full_data
def test_patients_shared_between_train_and_test(full):
    shared = explore.shared_patients(full.frame)
    assert len(shared) == 170
    assert shared["patient_id"].str.match(r"^person\d+$").all()  # README: 170 personNNN ids
    assert (shared["images_train"] > 0).all() and (shared["images_test"] > 0).all()
    per_split = explore.patients_per_split(full.frame).set_index("split")
    assert per_split["images"].to_dict() == {"train": 5216, "test": 624, "val": 16}
    assert per_split.loc["test", "patients"] > 170


@pytest.mark.full_data
def test_duplicate_groups(full):
    groups = explore.duplicate_groups(full.frame)
    assert groups["group"].nunique() == 21
    # The README says "42 files"; the manifest (and the files themselves) hold 20 pairs and one triple,
    # person258_bacteria_1207/1208/1209, so 43 files.
    assert len(groups) == 43
    assert sorted(groups.groupby("group").size().tolist()) == [2] * 20 + [3]
    assert (groups.groupby("group")["split"].nunique() == 1).all()  # each group within one split
    pair = groups[groups["path"] == "test/NORMAL/NORMAL2-IM-0095-0001.jpeg"]["group"].iloc[0]
    assert groups[groups["group"] == pair]["path"].tolist() == [
        "test/NORMAL/NORMAL2-IM-0095-0001.jpeg",
        "test/NORMAL/NORMAL2-IM-0096-0001.jpeg",
    ]
    assert explore.record(full, "test/NORMAL/NORMAL2-IM-0095-0001.jpeg")["duplicates"] == [
        "test/NORMAL/NORMAL2-IM-0096-0001.jpeg"
    ]
    # the manifest's hashes are those of the files
    for path in groups["path"].head(3):
        assert sha256_file(full.absolute(path)) == groups.loc[groups["path"] == path, "sha256"].iloc[0]


@pytest.mark.full_data
def test_overview_totals(full):
    stats = explore.overview(full.frame, full)
    assert stats["images"] == 5856
    assert stats["low_resolution"] == 3577
    assert stats["duplicate_groups"] == 21
    assert len(stats["shared_patients"]) == 170
    assert len(stats["sizes"]) == 5856


# --- filters and paging on the sample ---------------------------------------------------------------


def test_filters_on_sample(sample):
    frame = sample.frame
    assert len(explore.filter_frame(frame)) == len(frame)
    test = explore.filter_frame(frame, splits=["test"])
    assert len(test) == (frame["split"] == "test").sum() > 0 and set(test["split"]) == {"test"}
    normal = explore.filter_frame(frame, labels=["NORMAL"])
    assert set(normal["subtype"]) == {"normal"}
    virus_test = explore.filter_frame(frame, splits=["test"], subtypes=["virus"])
    assert len(virus_test) == ((frame["split"] == "test") & (frame["subtype"] == "virus")).sum() > 0
    low = explore.filter_frame(frame, resolution="low")
    high = explore.filter_frame(frame, resolution="full")
    assert len(low) + len(high) == len(frame) and len(low) > 0
    assert (low["low_resolution_source"] == 1).all()
    assert explore.filter_frame(frame, splits=[], labels=None).shape == frame.shape  # empty = no filter


def test_patient_search_is_plain_text(sample):
    frame = sample.frame
    pid = frame["patient_id"].iloc[0]
    hits = explore.filter_frame(frame, patient=pid.upper())
    assert pid in set(hits["patient_id"]) and hits["patient_id"].str.lower().str.contains(pid.lower()).all()
    assert explore.filter_frame(frame, patient="person.*").empty  # not a regular expression
    assert explore.filter_frame(frame, patient="[").empty  # would be an invalid pattern
    assert len(explore.filter_frame(frame, patient="   ")) == len(frame)


def test_unknown_resolution_is_refused(sample):
    with pytest.raises(ValueError, match="all, full, low"):
        explore.filter_frame(sample.frame, resolution="medium")


def test_paging(sample):
    frame = sample.frame
    first, pages = explore.page_of(frame, 1, 24)
    assert pages == -(-len(frame) // 24) and len(first) == min(24, len(frame))
    last, _ = explore.page_of(frame, 999, 24)  # past the end: the last page
    assert len(last) == len(frame) - 24 * (pages - 1)
    empty, pages = explore.page_of(frame.iloc[:0], 1)
    assert empty.empty and pages == 1


def test_options_order(sample):
    choices = explore.options(sample.frame)
    assert choices["splits"] == ["train", "test", "val"]
    assert choices["subtypes"] == ["normal", "bacteria", "virus"]
    assert choices["resolutions"] == list(explore.RESOLUTIONS)


# --- files: thumbnails, records, lazily computed hashes and sizes -------------------------------------


def test_thumbnail_decodes(sample):
    path = sample.frame["path"].iloc[0]
    data = explore.dataset_thumbnail(sample, path, 96)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG" and img.mode == "L"
        assert max(img.size) == 96
    row = sample.frame.iloc[0]
    ratio = row["width"] / row["height"]
    assert abs(img.size[0] / img.size[1] - ratio) < 0.05  # aspect ratio kept
    big = explore.thumbnail(sample.absolute(path), 4096)  # never enlarged
    with Image.open(io.BytesIO(big)) as img:
        assert img.size == (row["width"], row["height"])


def test_thumbnail_refuses_paths_outside_the_manifest(sample):
    with pytest.raises(KeyError):
        explore.dataset_thumbnail(sample, "../../../etc/passwd")
    with pytest.raises(ValueError, match="outside the data folder"):
        sample.absolute("../../../etc/passwd")


def test_record(sample):
    path = sample.frame["path"].iloc[3]
    info = explore.record(sample, path)
    assert info["path"] == path and info["duplicates"] == []
    assert {"split", "label", "subtype", "patient_id", "width", "height", "sha256"} <= set(info)
    rows = explore.record_rows(info)
    assert list(rows.columns) == ["field", "value"] and rows["value"].map(type).eq(str).all()
    fields = rows.set_index("field")["value"]
    assert fields["size"] == f"{info['width']} × {info['height']} px" and fields["duplicates"] == "none"
    low = sample.frame[sample.frame["low_resolution_source"] == 1]["path"].iloc[0]
    fields = explore.record_rows(explore.record(sample, low)).set_index("field")["value"]
    assert fields["low-res copy"].startswith("yes") and fields["source size"] == "224 × 224 px"
    with pytest.raises(KeyError):
        explore.record(sample, "train/NORMAL/not-there.jpeg")


def test_hashes_and_sizes_from_files_without_a_manifest(sample, tmp_path: Path):
    """A folder without manifest.csv: duplicates are found by hashing, sizes read from the files."""
    normal = sample.frame[sample.frame["label"] == "NORMAL"]["path"].iloc[:2].tolist()
    target = tmp_path / "test" / "NORMAL"
    target.mkdir(parents=True)
    for rel in normal:
        shutil.copy(sample.absolute(rel), target / Path(rel).name)
    shutil.copy(sample.absolute(normal[0]), target / "IM-9999-0001.jpeg")  # a byte-identical copy
    walked = load_dataset(tmp_path)
    assert "sha256" not in walked.frame and "width" not in walked.frame
    with pytest.raises(ValueError, match="pass the Dataset"):
        explore.duplicate_groups(walked.frame)
    groups = explore.duplicate_groups(walked.frame, walked)
    assert groups["group"].nunique() == 1
    assert sorted(groups["path"]) == sorted([f"test/NORMAL/{Path(normal[0]).name}", "test/NORMAL/IM-9999-0001.jpeg"])
    sizes = explore.size_table(walked.frame, walked)
    expected = sample.frame.set_index("path").loc[normal[0], ["width", "height"]].tolist()
    assert sizes.set_index("path").loc[f"test/NORMAL/{Path(normal[0]).name}", ["width", "height"]].tolist() == expected
    assert (sizes["source_width"] == sizes["width"]).all()
    stats = explore.overview(walked.frame, walked)
    assert stats["duplicate_groups"] == 1 and stats["shared_patients"].empty


def test_no_duplicates_gives_an_empty_table(sample):
    groups = explore.duplicate_groups(sample.frame)
    assert groups.empty and list(groups.columns) == ["group", "sha256", "path", "split", "label", "patient_id"]
    assert isinstance(explore.shared_patients(sample.frame), pd.DataFrame)
