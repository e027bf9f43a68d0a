"""Loaded models that answer for themselves: one `probabilities(images)` and one `explained_network()`.

`Predictor.get` hands these out, so serving, evaluation, reports and pages ask a model for its answer
instead of branching on its kind. Each is a `LoadedModel` (card, module, tensors) with behaviour:

- `ServedClassifier`: one network; the trunk at its serving precision, the head in fp32, then the
  card's temperature. It explains itself.
- `ServedKnn`: votes of the k nearest stored training embeddings of its backbone; the backbone's
  network stands in for it in a heatmap.
- `ServedEnsemble`: the mean of its members' calibrated probabilities; its first member stands in.

Members and backbones are looked up through `resolve` at each call (the Predictor's cache), so a
promoted member is picked up like any other model. One image is a batch of one (`PixelImages`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cxrdemo.evaluation.calibration import apply_temperature
from cxrdemo.imaging.preprocess import Images
from cxrdemo.inference.forward import embeddings, predict_logits
from cxrdemo.inference.knn import memory_probabilities
from cxrdemo.models.registry import LoadedModel

Resolver = Callable[[str], LoadedModel]


@dataclass
class ServedClassifier(LoadedModel):
    resolve: Resolver | None = field(default=None, repr=False)

    def probabilities(self, images: Images) -> np.ndarray:
        """Calibrated class probabilities (N, C)."""
        pixels = images.at(self.preprocessing)
        logits = predict_logits(self.module, pixels, self.preprocessing, precision=self.precision).numpy()
        return apply_temperature(logits, self.temperature)

    def explained_network(self) -> ServedClassifier:
        return self

    def heatmap_note(self) -> str | None:
        """Why the heatmap shows another network's view; None when it is this model's own."""
        return None


@dataclass
class ServedKnn(LoadedModel):
    resolve: Resolver | None = field(default=None, repr=False)

    @property
    def backbone(self) -> ServedClassifier:
        return self.resolve(self.card["backbone"])

    def probabilities(self, images: Images) -> np.ndarray:
        backbone = self.backbone
        queries = embeddings(backbone.module, images.at(backbone.preprocessing), backbone.preprocessing)
        return memory_probabilities(self, queries)

    def explained_network(self) -> ServedClassifier:
        return self.backbone.explained_network()

    def heatmap_note(self) -> str:
        return (
            f"{self.id} votes among stored training images and has no network of its own: "
            f"the heatmap explains its backbone, {self.card['backbone']}."
        )


@dataclass
class ServedEnsemble(LoadedModel):
    resolve: Resolver | None = field(default=None, repr=False)

    @property
    def members(self) -> list[str]:
        return list(self.card["members"])

    def probabilities(self, images: Images) -> np.ndarray:
        return np.mean([self.resolve(member).probabilities(images) for member in self.members], axis=0)

    def explained_network(self) -> ServedClassifier:
        return self.resolve(self.members[0]).explained_network()

    def heatmap_note(self) -> str:
        first, network = self.members[0], self.explained_network().id
        via = "" if first == network else f" (through {first})"
        return (
            f"{self.id} averages {len(self.members)} models and has no single network: "
            f"the heatmap explains its first member, {network}{via}."
        )


ServedModel = ServedClassifier | ServedKnn | ServedEnsemble
SERVED_KINDS: dict[str, type] = {"classifier": ServedClassifier, "knn": ServedKnn, "ensemble": ServedEnsemble}


def serve(model: LoadedModel, resolve: Resolver) -> LoadedModel:
    """The answering form of a loaded model (the autoencoder stays a plain LoadedModel: it scores images)."""
    kind = SERVED_KINDS.get(model.kind)
    if kind is None:
        return model
    return kind(model.id, model.card, model.module, model.tensors, resolve=resolve)
