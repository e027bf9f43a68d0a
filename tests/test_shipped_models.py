"""The models shipped in `weights/`: complete cards, matching weights, and test metrics that reproduce.

`weights/` changes while models are trained and promoted, so the tests work on a snapshot taken at
the start of the module and check whatever models it holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxrdemo.data.dataset import load_dataset
from cxrdemo.evaluation.evaluate import evaluate_model
from cxrdemo.imaging.preprocess import Preprocessing
from cxrdemo.inference.predict import Predictor
from cxrdemo.models.architectures import list_models
from cxrdemo.models.registry import list_cards, load_model, sha256_file
from cxrdemo.paths import REPO_ROOT, SAMPLE_DIR
from cxrdemo.tasks import get_task
from tests.weights_snapshot import snapshot_weights

TOLERANCE = 0.005  # about 3 of the 624 test images


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shipped")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRDEMO_CACHE", str(root / "cache"))
        weights = snapshot_weights(root / "weights")
        mp.setenv("CXRDEMO_WEIGHTS", str(weights))
        yield weights


@pytest.fixture(scope="module")
def cards(shipped: Path) -> dict[str, dict]:
    cards = list_cards(shipped)
    assert cards, "weights/ holds no model"
    return cards


def check_metrics(card: dict, split: str, task: str) -> list[str]:
    metrics = card.get("metrics", {}).get(split)
    if not isinstance(metrics, dict):
        return [f"metrics.{split} missing"]
    keys = ("accuracy", "roc_auc", "sensitivity", "specificity") if task == "binary" else ("accuracy", "macro_roc_auc")
    problems = [f"metrics.{split}.{k} missing" for k in keys if "value" not in metrics.get(k, {})]
    if not isinstance(metrics.get("n"), int) or metrics["n"] <= 0:
        problems.append(f"metrics.{split}.n missing")
    return problems


def card_problems(model_id: str, card: dict, cards: dict[str, dict], directory: Path) -> list[str]:
    """What a card of its kind lacks (the fields the app, the CLI and the registry rely on)."""
    if "error" in card:
        return [card["error"]]
    problems = [f"{k} missing" for k in ("id", "kind", "classes", "metrics", "created") if k not in card]
    if card.get("id") != model_id:
        problems.append(f"id {card.get('id')!r} differs from the file name")
    kind = card.get("kind")
    if kind != "ensemble":
        if not card.get("weights_sha256") or not card.get("weights_bytes"):
            problems.append("weights_sha256/weights_bytes missing")
        try:
            Preprocessing.from_dict(card["preprocessing"])
            if card["preprocessing"]["input_size"] < 16:
                problems.append("preprocessing.input_size too small")
        except (KeyError, TypeError) as err:
            problems.append(f"preprocessing unusable ({err})")
    if kind == "classifier":
        task = get_task(card.get("task", "?"))
        if card.get("arch") not in list_models():
            problems.append(f"arch {card.get('arch')!r} is not a registered architecture")
        if card.get("classes") != list(task.classes):
            problems.append("classes differ from the task's")
        training = card.get("training", {})
        for key in ("arch", "seed", "val_fraction", "epochs", "input_size"):
            if key not in training:
                problems.append(f"training.{key} missing")
        if training.get("input_size") != card.get("preprocessing", {}).get("input_size"):
            problems.append("training.input_size differs from preprocessing.input_size")
        if not card.get("data", {}).get("manifest_fingerprint"):
            problems.append("data.manifest_fingerprint missing")
        if not (isinstance(card.get("temperature"), float) and card["temperature"] > 0):
            problems.append("temperature missing")
        if task.num_classes == 2 and not (isinstance(card.get("threshold"), float) and 0 <= card["threshold"] <= 1):
            problems.append("threshold missing")
        for split in ("val", "test"):
            problems += check_metrics(card, split, task.name)
        if not (directory / f"{model_id}.predictions.csv").exists():
            problems.append("predictions file missing")
    elif kind == "autoencoder":
        if not (isinstance(card.get("threshold"), float) and card["threshold"] > 0):
            problems.append("threshold missing")
        if "val_normal" not in card.get("metrics", {}):
            problems.append("metrics.val_normal missing")
    elif kind == "knn":
        if card.get("backbone") not in cards:
            problems.append(f"backbone {card.get('backbone')!r} is not installed")
        if not isinstance(card.get("k"), int):
            problems.append("k missing")
        for split in ("val", "test"):
            problems += check_metrics(card, split, card.get("task", "binary"))
    elif kind == "ensemble":
        members = card.get("members") or []
        if not members:
            problems.append("members missing")
        for member in members:
            if cards.get(member, {}).get("kind") != "classifier" or cards[member].get("task") != "binary":
                problems.append(f"member {member!r} is not an installed binary classifier")
        problems += check_metrics(card, "val", "binary")
    else:
        problems.append(f"unknown kind {kind!r}")
    return problems


def test_every_card_is_complete_and_its_weights_match(shipped: Path, cards: dict[str, dict]):
    problems = {}
    for model_id, card in cards.items():
        found = card_problems(model_id, card, cards, shipped)
        if not found and card.get("kind") != "ensemble":
            weights = shipped / f"{model_id}.safetensors"
            if sha256_file(weights) != card["weights_sha256"] or weights.stat().st_size != card["weights_bytes"]:
                found.append("weights file does not match the card's sha256")
            else:
                loaded = load_model(model_id, shipped)  # the weights fit the architecture the card names
                assert loaded.card["id"] == model_id
        if found:
            problems[model_id] = found
    assert not problems, problems


def test_models_command_lists_them(shipped: Path, cards: dict[str, dict]):
    env = dict(os.environ, CXRDEMO_WEIGHTS=str(shipped))
    result = subprocess.run(
        [sys.executable, "-m", "cxrdemo", "models"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    table, _, segmenter = result.stdout.strip().partition("\n\n")  # the classifiers' table, then the lung model
    rows = table.splitlines()[1:]
    assert [row.split()[0] for row in rows] == list(cards)
    assert segmenter.startswith("lung-unet (lung fields") and "validation Dice" in segmenter
    for row, card in zip(rows, cards.values()):
        assert card.get("kind", "?") in row
        accuracy = card.get("metrics", {}).get("test", {}).get("accuracy", {}).get("value")
        if accuracy is not None:
            assert f"accuracy={round(accuracy, 4)}" in row


def dataset_for(card: dict, cards: dict[str, dict], full_data_dir: Path):
    """The dataset a card's metrics were computed on, recognised by its manifest fingerprint."""
    fingerprint = card.get("data", {}).get("manifest_fingerprint")
    if card.get("kind") == "knn":
        fingerprint = fingerprint or cards[card["backbone"]]["data"]["manifest_fingerprint"]
    for root in (full_data_dir, SAMPLE_DIR):
        if load_dataset(root).fingerprint == fingerprint:
            return root
    pytest.fail(
        f"{card['id']} was evaluated on data with fingerprint {fingerprint}: "
        f"neither {full_data_dir} nor the bundled sample"
    )


def reproduce(model_id: str, shipped: Path, cards: dict[str, dict], full_data_dir: Path) -> None:
    card = cards[model_id]
    root = dataset_for(card, cards, full_data_dir)
    result = evaluate_model(model_id, "test", data=str(root), n_boot=0, predictor=Predictor(shipped))
    stored = card["metrics"]["test"]
    assert result["n"] == stored["n"] == int((load_dataset(root).frame["split"] == "test").sum())
    for key in ("accuracy", "roc_auc"):
        assert result["metrics"][key]["value"] == pytest.approx(stored[key]["value"], abs=TOLERANCE), (model_id, key)


def test_default_model_reproduces_its_test_metrics(shipped: Path, cards: dict[str, dict], full_data_dir: Path):
    default = Predictor(shipped).default_model_id()
    assert cards[default].get("task") == "binary"
    reproduce(default, shipped, cards, full_data_dir)


@pytest.mark.parametrize("model_id", ["knn-binary", "ensemble"])
def test_knn_and_ensemble_reproduce_their_test_metrics(
    model_id: str, shipped: Path, cards: dict[str, dict], full_data_dir: Path
):
    if model_id not in cards:
        pytest.skip(f"{model_id} is not installed")
    reproduce(model_id, shipped, cards, full_data_dir)
