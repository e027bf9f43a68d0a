"""Trained models on disk: `weights/<id>.safetensors` + `weights/<id>.json` (the model card).

Writes are atomic (temporary file, then rename); loading checks the card's sha256 of the weights,
so a truncated or swapped file gives a clear `ModelLoadError` and the other models still load.
Nothing here unpickles anything: tensors come only from safetensors.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from safetensors.torch import load, save

from cxrdemo.card import CardError, ModelCard
from cxrdemo.fileio import atomic_write_bytes, atomic_write_json
from cxrdemo.imaging.preprocess import Preprocessing
from cxrdemo.models.architectures import model_skeleton
from cxrdemo.paths import weights_dir

ROLLBACK_DIR = ".rollback"  # previous version of each promoted model (git-ignored)
ARTIFACT_SUFFIXES = (".safetensors", ".json", ".predictions.csv")


class ModelLoadError(RuntimeError):
    """A model that cannot be used; the message is one line naming the model and the reason."""


@dataclass
class LoadedModel:
    id: str
    card: dict
    module: torch.nn.Module | None  # None for the ensemble (it combines other models)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # extra arrays (k-NN memory)

    @property
    def kind(self) -> str:
        return self.card.get("kind", "classifier")

    @property
    def classes(self) -> list[str]:
        return list(self.card.get("classes", []))

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.card.get("preprocessing", {}))

    @property
    def precision(self) -> str:
        """What the network runs in here: the card's measured choice, fp32 where bf16 would be emulated."""
        from cxrdemo.precision import serving_precision

        return serving_precision(self.card.get("inference_precision"), torch.device("cpu"))

    @property
    def temperature(self) -> float:
        return ModelCard.from_dict(self.card).temperature

    @property
    def threshold(self) -> float:
        return ModelCard.from_dict(self.card).decision_threshold


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_id(model_id: str) -> str:
    if not model_id or not all(c.isalnum() or c in "-_" for c in model_id):
        raise ModelLoadError(f"invalid model id {model_id!r}: use letters, digits, '-' and '_'")
    return model_id


def state_to_fp16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as fp16 (halves the file; inference upcasts), others unchanged, all contiguous."""
    return {k: (v.half() if v.dtype.is_floating_point else v).detach().cpu().contiguous() for k, v in state.items()}


def artifact_paths(directory: Path, model_id: str, *, run: bool = False) -> dict[str, Path]:
    """Weights, card and predictions files: `<id>.*` in the registry, fixed names in a run folder."""
    if run:
        return {
            "weights": directory / "model.safetensors",
            "card": directory / "card.json",
            "predictions": directory / "predictions.csv",
        }
    return {
        "weights": directory / f"{model_id}.safetensors",
        "card": directory / f"{model_id}.json",
        "predictions": directory / f"{model_id}.predictions.csv",
    }


def write_model(
    directory: Path,
    model_id: str,
    tensors: dict[str, torch.Tensor],
    card: ModelCard | dict,
    predictions_csv: str | None = None,
    *,
    run: bool = False,
) -> dict:
    """Write weights, then predictions, then the card (which names the weights' hash), each atomically."""
    _check_id(model_id)
    paths = artifact_paths(directory, model_id, run=run)
    directory.mkdir(parents=True, exist_ok=True)
    blob = save(state_to_fp16(tensors), metadata={"id": model_id}) if tensors else b""
    if tensors:
        atomic_write_bytes(paths["weights"], blob)
    card = card if isinstance(card, ModelCard) else ModelCard.from_dict(card)  # a dict is checked the same way
    card = {**card.to_dict(), "id": model_id}
    if tensors:
        card.update(weights_sha256=hashlib.sha256(blob).hexdigest(), weights_bytes=len(blob))
    if predictions_csv is not None:
        atomic_write_bytes(paths["predictions"], predictions_csv.encode())
    atomic_write_json(paths["card"], card)
    return card


def list_cards(directory: Path | None = None) -> dict[str, dict]:
    """Every model card in `directory` by id; unreadable cards appear as {"id", "error"}."""
    directory = directory or weights_dir()
    cards: dict[str, dict] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            card = ModelCard.from_dict(json.loads(path.read_text())).to_dict()
        except CardError as err:
            card = {"id": path.stem, "error": f"invalid model card: {err}"}
        except (OSError, ValueError) as err:
            card = {"id": path.stem, "error": f"unreadable model card: {err}"}
        cards[path.stem] = card
    return cards


def load_card(model_id: str, directory: Path | None = None) -> dict:
    directory = directory or weights_dir()
    path = directory / f"{_check_id(model_id)}.json"
    if not path.exists():
        known = ", ".join(list_cards(directory)) or "none"
        raise ModelLoadError(f"no model {model_id!r} in {directory} (available: {known})")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model {model_id}: its card {path.name} is unreadable ({err})") from None
    try:
        return ModelCard.from_dict(raw).to_dict()
    except CardError as err:
        raise ModelLoadError(f"model {model_id}: its card {path.name} is invalid ({err})") from None


def annotate_card(model_id: str, key: str, value: dict, directory: Path | None = None) -> dict:
    """Store a measurement made after training (e.g. the frame probe) under `key` of an installed card.

    The weights and their hash are untouched; a key the card schema knows cannot be overwritten.
    """
    directory = directory or weights_dir()
    if key in {f.name for f in fields(ModelCard)}:
        raise ValueError(f"{key!r} is a model card field, not an annotation")
    card = {**load_card(model_id, directory), key: value}
    atomic_write_json(directory / f"{_check_id(model_id)}.json", card)
    return card


VERIFY_ATTEMPTS = 5  # a promotion replaces weights, then the card: a reader in between retries


def _verified_weights(model_id: str, directory: Path) -> tuple[dict, bytes]:
    """(card, weights bytes) that belong together: the bytes hashed are the bytes loaded.

    `promote` replaces the weights file and then the card, each atomically; a reader that lands between
    the two sees a new file and the old card, which the hash shows, and it reads both again.
    """
    path = directory / f"{model_id}.safetensors"
    for attempt in range(VERIFY_ATTEMPTS):
        card = load_card(model_id, directory)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise ModelLoadError(f"model {model_id}: weights file {path.name} is missing") from None
        if not card.get("weights_sha256") or hashlib.sha256(blob).hexdigest() == card["weights_sha256"]:
            return card, blob
        time.sleep(0.05 * (attempt + 1))
    raise ModelLoadError(f"model {model_id}: {path.name} does not match its card (corrupt or replaced)")


def load_model(model_id: str, directory: Path | None = None) -> LoadedModel:
    """Load a model by id, verifying the weights' sha256 against the card."""
    directory = directory or weights_dir()
    card = load_card(model_id, directory)
    if card.get("kind") == "ensemble":
        return LoadedModel(model_id, card, None)
    card, blob = _verified_weights(model_id, directory)
    path = directory / f"{model_id}.safetensors"
    try:
        tensors = load(blob)
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ModelLoadError(f"model {model_id}: cannot read {path.name} ({type(err).__name__})") from None
    if card.get("kind") == "knn":
        return LoadedModel(model_id, card, None, tensors)
    try:
        seeds = int((card.get("training") or {}).get("seeds", 1))
        module = model_skeleton(card["arch"], len(card.get("classes", [])) or 2, seeds)
        state = {k: v.float() if v.dtype == torch.float16 else v for k, v in tensors.items()}
        module.load_state_dict(state, assign=True)
        if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            raise ValueError("a parameter or buffer is not in the weights file")
    except (KeyError, RuntimeError, ValueError) as err:
        reason = str(err).splitlines()[0][:160]
        raise ModelLoadError(
            f"model {model_id}: weights do not fit architecture {card.get('arch')!r} ({reason})"
        ) from None
    return LoadedModel(model_id, card, module.eval())


def load_predictions(model_id: str, directory: Path | None = None):
    """The per-image validation/test predictions saved with a model (a pandas DataFrame)."""
    import pandas as pd

    path = (directory or weights_dir()) / f"{_check_id(model_id)}.predictions.csv"
    if not path.exists():
        raise ModelLoadError(f"model {model_id} has no stored predictions")
    return pd.read_csv(path)


def promote(run_dir: Path, model_id: str | None = None, directory: Path | None = None) -> dict:
    """Install a finished run's model into `weights/`, keeping the replaced version for `rollback`."""
    directory = directory or weights_dir()
    source = artifact_paths(run_dir, "", run=True)
    if not source["card"].exists():
        raise ModelLoadError(f"{run_dir} has no finished model (card.json missing)")
    card = json.loads(source["card"].read_text())
    model_id = _check_id(model_id or card["id"])
    if not source["weights"].exists() or sha256_file(source["weights"]) != card.get("weights_sha256"):
        raise ModelLoadError(f"{run_dir}: model.safetensors is missing or does not match card.json")
    _backup(directory, model_id)
    target = artifact_paths(directory, model_id)
    if source["predictions"].exists():
        atomic_write_bytes(target["predictions"], source["predictions"].read_bytes())
    atomic_write_bytes(target["weights"], source["weights"].read_bytes())
    atomic_write_json(target["card"], {**card, "id": model_id, "promoted_from": run_dir.name})
    return load_card(model_id, directory)


def _backup(directory: Path, model_id: str) -> None:
    backup = directory / ROLLBACK_DIR
    backup.mkdir(parents=True, exist_ok=True)  # a fresh weights folder (CXRDEMO_WEIGHTS) may not exist yet
    for suffix in ARTIFACT_SUFFIXES:
        current = directory / f"{model_id}{suffix}"
        if current.exists():
            atomic_write_bytes(backup / current.name, current.read_bytes())


def can_roll_back(model_id: str, directory: Path | None = None) -> bool:
    return ((directory or weights_dir()) / ROLLBACK_DIR / f"{model_id}.json").exists()


def rollback(model_id: str, directory: Path | None = None) -> dict:
    """Swap a model back to the version it replaced (a second rollback swaps forward again)."""
    directory = directory or weights_dir()
    backup = directory / ROLLBACK_DIR
    if not can_roll_back(model_id, directory):
        raise ModelLoadError(f"model {model_id} has no previous version to roll back to")
    staged = {}
    for suffix in ARTIFACT_SUFFIXES:
        old = backup / f"{model_id}{suffix}"
        staged[suffix] = old.read_bytes() if old.exists() else None
    _backup(directory, model_id)
    for suffix in (".safetensors", ".predictions.csv", ".json"):
        target = directory / f"{model_id}{suffix}"
        if staged[suffix] is None:
            target.unlink(missing_ok=True)
        else:
            atomic_write_bytes(target, staged[suffix])
    return load_card(model_id, directory)
