"""The model card: what a trained model is, how to feed it, how it decides and how well it did.

One type for every kind of model (after MONAI's `metadata.json` and torchvision's weight `meta`).
Producers build a `ModelCard` and `registry.write_model` writes it; `registry.load_card` reads every
card through `ModelCard.from_dict`, which checks it, so a card missing what serving needs is refused
with one line instead of failing later. On disk a card is flat JSON: the common fields below and the
kind's own fields (`extra`: an ensemble's members, a k-NN's backbone and k, a classifier's alternative
thresholds, the autoencoder's image statistics). Cards written before this type existed load unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

KINDS = ("classifier", "knn", "ensemble", "autoencoder")
DEFAULT_THRESHOLD = 0.5  # a binary card without a threshold decides at 0.5 (argmax)


def decision_threshold(threshold: float | None) -> float:
    """The threshold a binary model decides at: the card's own (0.0 stays 0.0), else the default."""
    return DEFAULT_THRESHOLD if threshold is None else float(threshold)


class CardError(ValueError):
    """A card that does not describe a usable model; the message names the field."""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class ModelCard:
    kind: str  # one of KINDS
    task: str  # binary | subtype | anomaly (the autoencoder)
    arch: str  # an architecture of cxrdemo.models.architectures, or "knn" / "ensemble"
    classes: list[str]  # output order; empty for the autoencoder
    preprocessing: dict | None = None  # Preprocessing.to_dict(); None for the ensemble (members have theirs)
    threshold: float | None = None  # decision threshold on P(positive class); None: argmax / not binary
    temperature: float = 1.0  # logits are divided by it before softmax (fitted on validation)
    metrics: dict = field(default_factory=dict)  # split -> metric -> value (with intervals)
    training: dict = field(default_factory=dict)  # the resolved recipe and what the run measured
    data: dict = field(default_factory=dict)  # dataset name, manifest fingerprint, split sizes
    created: str = field(default_factory=now)
    id: str = ""  # set by write_model
    extra: dict = field(default_factory=dict)  # the kind's own fields, stored flat beside the ones above

    @property
    def decision_threshold(self) -> float:
        return decision_threshold(self.threshold)

    def to_dict(self) -> dict[str, Any]:
        common = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **common}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelCard:
        """Check and read a card as stored; unknown keys are kept in `extra`."""
        if not isinstance(values, dict):
            raise CardError("a model card must be a JSON object")
        kind = values.get("kind", "classifier")  # the oldest cards had no kind: classifiers
        if kind not in KINDS:
            raise CardError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        for name in ("task", "arch"):
            if not isinstance(values.get(name), str):
                raise CardError(f"field {name!r} is missing or not text")
        classes = values.get("classes", [])
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise CardError("field 'classes' must be a list of names")
        if kind != "autoencoder" and len(classes) < 2:
            raise CardError(f"a {kind} needs at least two classes")
        if kind in ("classifier", "knn", "autoencoder") and not isinstance(values.get("preprocessing"), dict):
            raise CardError("field 'preprocessing' is missing")
        if kind == "ensemble" and not values.get("members"):
            raise CardError("an ensemble card must list its members")
        threshold = values.get("threshold")
        if threshold is not None and not isinstance(threshold, int | float):
            raise CardError("field 'threshold' must be a number or null")
        temperature = values.get("temperature")
        temperature = 1.0 if temperature is None else temperature
        if not isinstance(temperature, int | float) or not temperature > 0:
            raise CardError("field 'temperature' must be a positive number")
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            kind=kind,
            task=values["task"],
            arch=values["arch"],
            classes=list(classes),
            preprocessing=values.get("preprocessing"),
            threshold=None if threshold is None else float(threshold),
            temperature=float(temperature),
            metrics=values.get("metrics") or {},
            training=values.get("training") or {},
            data=values.get("data") or {},
            created=values.get("created") or "",
            id=values.get("id") or "",
            extra={k: v for k, v in values.items() if k not in names},
        )
