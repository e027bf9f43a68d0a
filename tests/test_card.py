"""The model card type: every shipped card reads through it unchanged; broken cards are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrdemo.card import CardError, ModelCard
from cxrdemo.models.registry import ModelLoadError, list_cards, load_card
from cxrdemo.paths import REPO_ROOT, weights_dir

SHIPPED = sorted(weights_dir().glob("*.json"))  # the session snapshot (tests/conftest.py)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_card_round_trips(path: Path):
    stored = json.loads(path.read_text())
    card = ModelCard.from_dict(stored)
    assert card.kind in ("classifier", "knn", "ensemble", "autoencoder")
    again = card.to_dict()
    for key, value in stored.items():  # nothing on disk is lost or changed
        assert again[key] == value, key
    assert set(again) - set(stored) <= {"temperature", "threshold", "preprocessing", "training", "data", "metrics"}


def good() -> dict:
    return {
        "kind": "classifier",
        "task": "binary",
        "arch": "cnn4",
        "classes": ["NORMAL", "PNEUMONIA"],
        "preprocessing": {"input_size": 64},
        "threshold": 0.5,
        "temperature": 1.5,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "forest"}, "unknown kind 'forest'"),
        ({"task": None}, "field 'task' is missing"),
        ({"classes": ["NORMAL"]}, "needs at least two classes"),
        ({"preprocessing": None}, "field 'preprocessing' is missing"),
        ({"threshold": "high"}, "field 'threshold' must be a number"),
        ({"temperature": 0}, "field 'temperature' must be a positive number"),
        ({"kind": "ensemble", "members": []}, "must list its members"),
    ],
)
def test_broken_cards_are_refused_with_the_field_named(change: dict, message: str):
    with pytest.raises(CardError, match=message):
        ModelCard.from_dict({**good(), **change})


def test_decision_threshold_has_one_default():
    assert ModelCard.from_dict({**good(), "threshold": None}).decision_threshold == 0.5
    assert ModelCard.from_dict({**good(), "threshold": 0.0}).decision_threshold == 0.0  # 0.0 is a threshold


def test_an_invalid_card_is_listed_with_its_reason_and_refused_alone(tmp_path: Path):
    (tmp_path / "good.json").write_text(json.dumps(good()))
    (tmp_path / "bad.json").write_text(json.dumps({**good(), "classes": "NORMAL"}))
    cards = list_cards(tmp_path)
    assert cards["bad"]["error"] == "invalid model card: field 'classes' must be a list of names"
    assert cards["good"]["temperature"] == 1.5
    with pytest.raises(ModelLoadError, match=r"model bad: its card bad.json is invalid \(field 'classes'"):
        load_card("bad", tmp_path)


def test_the_suite_reads_a_snapshot_of_the_weights_not_the_live_folder() -> None:
    """A campaign promoting into weights/ mid-run cannot change what the tests see (tests/conftest.py)."""
    assert weights_dir().resolve() != (REPO_ROOT / "weights").resolve()
    cards = list_cards(weights_dir())
    assert cards and not [model_id for model_id, card in cards.items() if "error" in card]
