"""Dataset manifest, file-name parsing, the patient split, the decoded-tensor cache and augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrdemo.data.dataset import load_dataset, parse_file_name, patient_split
from cxrdemo.data.tensor_cache import cache_key, load_pixels
from cxrdemo.imaging.augment import AugmentConfig, augment
from cxrdemo.imaging.decode import load_image_file
from cxrdemo.imaging.preprocess import resize_square
from cxrdemo.tasks import get_task

# the table in the dataset README
README_COUNTS = {
    ("train", "NORMAL"): 1341,
    ("train", "PNEUMONIA"): 3875,
    ("test", "NORMAL"): 234,
    ("test", "PNEUMONIA"): 390,
    ("val", "NORMAL"): 8,
    ("val", "PNEUMONIA"): 8,
}


@pytest.fixture(scope="module")
def full(full_data_dir: Path):
    return load_dataset(full_data_dir)


@pytest.fixture()
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CXRDEMO_CACHE", str(cache))
    return cache


# --- the full dataset ------------------------------------------------------------------------------


def test_full_manifest_counts_match_readme(full):
    counts = full.frame.groupby(["split", "label"]).size().to_dict()
    assert counts == README_COUNTS
    subtypes = full.frame.loc[full.frame["label"] == "PNEUMONIA", "subtype"].value_counts().to_dict()
    assert subtypes == {"bacteria": 2780, "virus": 1493}
    assert (full.frame.loc[full.frame["label"] == "NORMAL", "subtype"] == "normal").all()
    assert full.frame["path"].is_unique


def test_file_names_give_the_manifest_patient_and_subtype_for_every_row(full):
    parsed = [parse_file_name(Path(p).name, label) for p, label in zip(full.frame["path"], full.frame["label"])]
    mismatched = [
        (path, want, got)
        for path, want, got in zip(full.frame["path"], zip(full.frame["subtype"], full.frame["patient_id"]), parsed)
        if tuple(want) != got
    ]
    assert not mismatched, mismatched[:5]
    # the NORMAL2- batch keeps its prefix: its numbering may not refer to the same patients as IM-NNNN
    assert parse_file_name("NORMAL2-IM-0095-0001.jpeg", "NORMAL") == ("normal", "NORMAL2-IM-0095")
    assert parse_file_name("IM-0095-0001.jpeg", "NORMAL") == ("normal", "IM-0095")
    assert parse_file_name("person1614_virus_2800.jpeg", "PNEUMONIA") == ("virus", "person1614")


def test_patient_split_of_full_train(full):
    train = full.split("train")
    fit, val = patient_split(train, seed=0)
    assert len(fit) + len(val) == len(train)
    assert set(fit["path"]).isdisjoint(val["path"])
    assert set(fit["patient_id"]).isdisjoint(val["patient_id"])
    assert len(val) / len(train) == pytest.approx(0.15, abs=0.01)
    for side in (fit, val):
        assert set(side["label"]) == {"NORMAL", "PNEUMONIA"}
        assert set(side["subtype"]) == {"normal", "bacteria", "virus"}
    # stratified: each subtype's share of validation is close to its share of train
    share = val["subtype"].value_counts() / train["subtype"].value_counts()
    assert share.between(0.13, 0.17).all(), share.to_dict()

    again = patient_split(train, seed=0)[1]
    assert list(again["path"]) == list(val["path"])
    other = patient_split(train, seed=1)[1]
    assert set(other["patient_id"]) != set(val["patient_id"])
    assert set(other["patient_id"]).isdisjoint(patient_split(train, seed=1)[0]["patient_id"])


# --- the folder without a manifest -----------------------------------------------------------------


def test_walking_the_folder_gives_the_manifest_labels(sample_dir: Path, tmp_path: Path):
    manifest = load_dataset(sample_dir).frame
    chosen = pd.concat([g.head(2) for _, g in manifest.groupby(["split", "subtype"])])
    assert len(chosen) >= 10
    for rel in chosen["path"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_dir / rel, tmp_path / rel)
    (tmp_path / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    assert not (tmp_path / "manifest.csv").exists()

    walked = load_dataset(tmp_path).frame.set_index("path").sort_index()
    expected = chosen.set_index("path").sort_index()
    assert list(walked.index) == list(expected.index)
    for column in ("split", "label", "subtype", "patient_id"):
        assert walked[column].tolist() == expected[column].astype(str).tolist(), column


def test_empty_folder_and_missing_folder_raise(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no images"):
        load_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


# --- Dataset helpers -------------------------------------------------------------------------------


def test_absolute_refuses_paths_leaving_the_data_folder(sample_dir: Path):
    dataset = load_dataset(sample_dir)
    inside = dataset.absolute(dataset.frame["path"][0])
    assert inside.is_file()
    for bad in ("../x", "train/../../x", "/etc/passwd"):
        with pytest.raises(ValueError, match="outside the data folder"):
            dataset.absolute(bad)


def test_targets_map_classes_and_raise_on_unknown_label(sample_dir: Path):
    dataset = load_dataset(sample_dir)
    frame = dataset.split("test")
    binary = dataset.targets(frame, get_task("binary"))
    assert binary.tolist() == (frame["label"] == "PNEUMONIA").astype(int).tolist()
    assert binary.dtype == np.int64 and binary.flags.writeable  # torch.from_numpy needs a writable array
    subtype = dataset.targets(frame, get_task("subtype"))
    assert [("normal", "bacteria", "virus")[i] for i in subtype] == frame["subtype"].tolist()

    broken = frame.copy()
    broken.loc[0, "label"] = "COVID"
    with pytest.raises(ValueError, match="COVID"):
        dataset.targets(broken, get_task("binary"))


# --- decoded tensor cache --------------------------------------------------------------------------


def test_load_pixels_decodes_then_reads_the_cache(sample_dir: Path, private_cache: Path):
    dataset = load_dataset(sample_dir)
    frame = dataset.split("test")
    pixels = load_pixels(dataset, frame, 48)
    assert pixels.shape == (len(frame), 48, 48)
    assert pixels.dtype == torch.uint8
    assert int(pixels.max()) > 200 and int(pixels.min()) < 50  # real radiographs, not a blank tensor
    # row order is frame order: rows differ, as the images do
    assert not torch.equal(pixels[0], pixels[1])

    cached = private_cache / f"pixels-{cache_key(dataset, frame, 48)}.npy"
    assert cached.is_file()
    assert [p.name for p in private_cache.iterdir()] == [cached.name]  # no temporary file left behind
    stamp = cached.stat().st_mtime_ns
    again = load_pixels(dataset, frame, 48)
    assert torch.equal(again, pixels)
    assert cached.stat().st_mtime_ns == stamp  # read, not rewritten

    # the cache really is what is read: a changed file on disk is what comes back
    np.save(cached, np.zeros((len(frame), 48, 48), np.uint8))
    assert int(load_pixels(dataset, frame, 48).max()) == 0
    assert torch.equal(load_pixels(dataset, frame, 48, use_cache=False), pixels)

    # the cache holds what an upload of the same file gives after the serving resize
    for row, path in enumerate(frame["path"]):
        upload = resize_square(load_image_file(dataset.absolute(path)).pixels, 48)
        assert np.array_equal(pixels[row].numpy(), upload), path

    # another size or another set of rows is another cache entry
    assert load_pixels(dataset, frame.head(3), 32).shape == (3, 32, 32)
    assert len(list(private_cache.glob("pixels-*.npy"))) == 2


# --- augmentation ----------------------------------------------------------------------------------


def test_augment_keeps_shape_and_range_and_is_seeded(sample_dir: Path, private_cache: Path):
    dataset = load_dataset(sample_dir)
    batch = load_pixels(dataset, dataset.split("test"), 64)[:, None].float() / 255.0
    cfg = AugmentConfig()

    out = augment(batch, cfg, torch.Generator().manual_seed(3))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert torch.isfinite(out).all()
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert (out - batch).abs().mean(dim=(1, 2, 3)).min() > 1e-3  # every image changed
    assert torch.equal(batch, load_pixels(dataset, dataset.split("test"), 64)[:, None].float() / 255.0)  # input kept

    same = augment(batch, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(out, same)
    other = augment(batch, cfg, torch.Generator().manual_seed(4))
    assert not torch.allclose(out, other)


def test_evaluation_validates_on_the_images_training_validated_on(sample_dir: Path, private_cache: Path):
    """`evaluate --split val` of a model trained with --subset scores the subset's validation side."""
    from cxrdemo.data.dataset import card_validation_split
    from cxrdemo.evaluation.evaluate import split_frame
    from cxrdemo.training.config import TrainConfig
    from cxrdemo.training.data import prepare_data

    dataset = load_dataset(sample_dir)
    for arch, subset, kind in (("cnn4", 24, "classifier"), ("autoencoder", None, "autoencoder")):
        cfg = TrainConfig(arch=arch, task="binary", data=str(sample_dir), subset=subset, input_size=32, seed=3)
        prepared = prepare_data(cfg, torch.device("cpu"))
        card = {"kind": kind, "training": cfg.to_dict()}
        trained_on, validated_on = (set(side.frame["path"]) for side in (prepared.train, prepared.val))
        assert set(split_frame(dataset, card, "val")["path"]) == validated_on
        assert set(card_validation_split(dataset, card)[0]["path"]) == trained_on
        assert not trained_on & validated_on
    # with --subset the validation side differs from the full split's: the check above is not trivial
    full_val = set(split_frame(dataset, {"kind": "classifier", "training": {"seed": 3}}, "val")["path"])
    subset_cfg = TrainConfig(arch="cnn4", task="binary", data=str(sample_dir), subset=24, input_size=32, seed=3)
    assert set(prepare_data(subset_cfg, torch.device("cpu")).val.frame["path"]) != full_val
