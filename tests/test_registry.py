"""Weights and model cards on disk: fp16 round trip, damaged files, promotion and rollback, no pickle."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cxrdemo.inference.predict import Predictor
from cxrdemo.models.architectures import create_model
from cxrdemo.models.registry import (
    ModelLoadError,
    can_roll_back,
    list_cards,
    load_model,
    promote,
    rollback,
    write_model,
)
from cxrdemo.paths import REPO_ROOT


def trained_like_cnn4(seed: int) -> torch.nn.Module:
    """A cnn4 with random weights and BatchNorm statistics moved off their defaults."""
    torch.manual_seed(seed)
    model = create_model("cnn4", 2)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(4, 1, 32, 32) * 2 - 1)
    return model.eval()


def card_for(model_id: str, **extra) -> dict:
    return {
        "kind": "classifier",
        "arch": "cnn4",
        "task": "binary",
        "classes": ["NORMAL", "PNEUMONIA"],
        "preprocessing": {"input_size": 64, "mean": 0.5, "std": 0.25, "resize": "squash"},
        "temperature": 1.0,
        "threshold": 0.5,
        "metrics": {},
        **extra,
    }


def write(directory: Path, model_id: str, seed: int = 0, **card_extra) -> torch.nn.Module:
    model = trained_like_cnn4(seed)
    write_model(directory, model_id, model.state_dict(), card_for(model_id, **card_extra), "path,split\n")
    return model


def test_write_and_load_round_trip_in_fp16(tmp_path: Path):
    model = write(tmp_path, "round-trip")
    card = json.loads((tmp_path / "round-trip.json").read_text())
    blob = (tmp_path / "round-trip.safetensors").read_bytes()
    assert card["id"] == "round-trip"
    assert card["weights_sha256"] == hashlib.sha256(blob).hexdigest()
    assert card["weights_bytes"] == len(blob)

    stored = load_file(tmp_path / "round-trip.safetensors")
    assert stored.keys() == model.state_dict().keys()
    for key, value in stored.items():
        original = model.state_dict()[key]
        assert value.dtype == (torch.float16 if original.dtype.is_floating_point else original.dtype), key

    loaded = load_model("round-trip", tmp_path)
    assert loaded.card["arch"] == "cnn4" and loaded.classes == ["NORMAL", "PNEUMONIA"]
    assert not loaded.module.training
    assert all(p.dtype == torch.float32 for p in loaded.module.parameters())
    x = torch.rand(6, 1, 64, 64) * 2 - 1
    with torch.inference_mode():
        want, got = model(x), loaded.module(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    # the loaded weights are exactly the fp16-rounded originals
    for key, value in loaded.module.state_dict().items():
        torch.testing.assert_close(
            value,
            model.state_dict()[key].to(value.dtype).half().to(value.dtype)
            if value.dtype.is_floating_point
            else model.state_dict()[key],
        )


def test_corrupt_weights_fail_alone(tmp_path: Path):
    write(tmp_path, "broken", seed=1)
    write(tmp_path, "healthy", seed=2)
    path = tmp_path / "broken.safetensors"
    blob = bytearray(path.read_bytes())
    for i in range(len(blob) // 2, len(blob) // 2 + 16):
        blob[i] ^= 0xFF
    path.write_bytes(bytes(blob))

    with pytest.raises(ModelLoadError, match="broken") as err:
        load_model("broken", tmp_path)
    assert "\n" not in str(err.value)
    assert "does not match its card" in str(err.value)
    assert load_model("healthy", tmp_path).module is not None

    predictor = Predictor(tmp_path)
    with pytest.raises(ModelLoadError, match="broken"):
        predictor.get("broken")
    assert predictor.get("healthy").id == "healthy"


def test_damaged_weights_without_a_hash_still_give_a_clean_error(tmp_path: Path):
    write(tmp_path, "unhashed")
    card_path = tmp_path / "unhashed.json"
    card = json.loads(card_path.read_text())
    del card["weights_sha256"]
    card_path.write_text(json.dumps(card))
    path = tmp_path / "unhashed.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="unhashed: cannot read"):
        load_model("unhashed", tmp_path)


def test_weights_of_another_architecture_are_refused(tmp_path: Path):
    write(tmp_path, "mislabelled")
    card_path = tmp_path / "mislabelled.json"
    card = json.loads(card_path.read_text())
    card["arch"] = "zubinrnet"
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="do not fit architecture 'zubinrnet'") as err:
        load_model("mislabelled", tmp_path)
    assert "\n" not in str(err.value)


def test_missing_weights_and_unknown_model(tmp_path: Path):
    write(tmp_path, "gone")
    write(tmp_path, "other", seed=3)
    (tmp_path / "gone.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="gone: weights file gone.safetensors is missing"):
        load_model("gone", tmp_path)
    with pytest.raises(ModelLoadError, match="no model 'nobody'.*available: gone, other"):
        load_model("nobody", tmp_path)
    with pytest.raises(ModelLoadError, match="invalid model id"):
        load_model("../weights/other", tmp_path)


def test_truncated_card_is_listed_with_an_error_and_others_load(tmp_path: Path):
    write(tmp_path, "half-card")
    write(tmp_path, "whole-card", seed=4)
    card_path = tmp_path / "half-card.json"
    text = card_path.read_text()
    card_path.write_text(text[: len(text) // 2])

    cards = list_cards(tmp_path)
    assert set(cards) == {"half-card", "whole-card"}
    assert "unreadable model card" in cards["half-card"]["error"]
    assert "error" not in cards["whole-card"]
    with pytest.raises(ModelLoadError, match="half-card"):
        load_model("half-card", tmp_path)
    assert load_model("whole-card", tmp_path).module is not None
    assert Predictor(tmp_path).model_ids("binary") == ["whole-card"]


def make_run(run_dir: Path, seed: int, created: str) -> dict:
    model = trained_like_cnn4(seed)
    return write_model(
        run_dir,
        "cnn4-binary",
        model.state_dict(),
        card_for("cnn4-binary", created=created),
        f"path,split,seed\nx.jpeg,test,{seed}\n",
        run=True,
    )


def test_promote_rollback_and_rollback_again(tmp_path: Path, weights_copy: Path):
    shipped_before = {p.name: p.read_bytes() for p in weights_copy.iterdir() if p.is_file()}
    model_id = "promotion-test"
    first = make_run(tmp_path / "runs" / "first", 1, "v1")
    second = make_run(tmp_path / "runs" / "second", 2, "v2")

    installed = promote(tmp_path / "runs" / "first", model_id)  # directory defaults to CXRDEMO_WEIGHTS
    assert installed["id"] == model_id and installed["created"] == "v1"
    assert installed["promoted_from"] == "first"
    assert not can_roll_back(model_id)
    with pytest.raises(ModelLoadError, match="no previous version"):
        rollback(model_id)

    promote(tmp_path / "runs" / "second", model_id)
    assert load_model(model_id).card["weights_sha256"] == second["weights_sha256"]
    assert (weights_copy / f"{model_id}.predictions.csv").read_text().endswith(",2\n")
    assert can_roll_back(model_id)

    assert rollback(model_id)["created"] == "v1"
    back = load_model(model_id)
    assert back.card["weights_sha256"] == first["weights_sha256"]
    assert (weights_copy / f"{model_id}.predictions.csv").read_text().endswith(",1\n")

    assert rollback(model_id)["created"] == "v2"  # a second rollback swaps forward again
    assert load_model(model_id).card["weights_sha256"] == second["weights_sha256"]

    # nothing else in the registry was touched
    for name, data in shipped_before.items():
        assert (weights_copy / name).read_bytes() == data, name


def test_promote_refuses_a_half_written_checkpoint(tmp_path: Path, weights_copy: Path):
    model_id = "half-written"
    make_run(tmp_path / "good", 1, "v1")
    promote(tmp_path / "good", model_id)
    installed = {p.name: p.read_bytes() for p in weights_copy.glob(f"{model_id}.*")}

    make_run(tmp_path / "torn", 2, "v2")
    weights = tmp_path / "torn" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="does not match card.json"):
        promote(tmp_path / "torn", model_id)
    (tmp_path / "torn" / "card.json").unlink()
    with pytest.raises(ModelLoadError, match="card.json missing"):
        promote(tmp_path / "torn", model_id)

    assert {p.name: p.read_bytes() for p in weights_copy.glob(f"{model_id}.*")} == installed
    assert load_model(model_id).card["created"] == "v1"
    assert not can_roll_back(model_id)


# --- no pickle ------------------------------------------------------------------------------------

SOURCES = sorted((REPO_ROOT / "cxrdemo").rglob("*.py"))


def calls_named(tree: ast.AST, dotted: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and ast.unparse(node.func) == dotted]


def test_sources_never_unpickle():
    assert len(SOURCES) > 10
    torch_loads = 0
    for path in SOURCES:
        text = path.read_text()
        tree = ast.parse(text)
        loads = calls_named(tree, "torch.load")
        assert text.count("torch.load(") == len(loads), path  # every textual occurrence is a parsed call
        for call in loads:
            keywords = {k.arg: k.value for k in call.keywords}
            assert "weights_only" in keywords, f"{path.name}:{call.lineno} torch.load without weights_only"
            assert ast.literal_eval(keywords["weights_only"]) is True, f"{path.name}:{call.lineno}"
        torch_loads += len(loads)
        for call in calls_named(tree, "np.load"):
            keywords = {k.arg: k.value for k in call.keywords}
            assert "allow_pickle" not in keywords or ast.literal_eval(keywords["allow_pickle"]) is False, path
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & {"pickle", "dill", "cloudpickle"}, path
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in {"pickle", "dill", "cloudpickle"}, path
    assert torch_loads >= 1  # the ImageNet cache reader; the check above really looked at it


def test_loads_during_promotions_never_pair_weights_with_another_card(tmp_path: Path):
    """Readers racing a promoter that swaps two versions back and forth always get a matching pair."""
    import threading

    runs = {seed: tmp_path / f"run-{seed}" for seed in (1, 2)}
    expected = {}
    for seed, run_dir in runs.items():
        card = make_run(run_dir, seed, created=f"v{seed}")
        expected[card["created"]] = trained_like_cnn4(seed).state_dict()["head.6.weight"].half().float()
    weights = tmp_path / "weights"
    promote(runs[1], directory=weights)
    stop = threading.Event()
    seen, failures = [], []

    def reader() -> None:
        while not stop.is_set():
            try:
                loaded = load_model("cnn4-binary", weights)
            except ModelLoadError as err:
                failures.append(str(err))
                continue
            head = loaded.module.state_dict()["head.6.weight"]
            seen.append(torch.equal(head, expected[loaded.card["created"]]))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for i in range(30):
        promote(runs[2 if i % 2 == 0 else 1], directory=weights)
    stop.set()
    for thread in threads:
        thread.join()
    assert not failures
    assert len(seen) > 10 and all(seen)
