"""Fit k-NN on a trained backbone's embeddings (the `build-knn` command).

Fitted on the training side of the backbone's own patient split; k is chosen on its validation side by
AUROC, the threshold by Youden's J on validation; the test split is evaluated once, afterwards.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrdemo.card import ModelCard
from cxrdemo.data.dataset import card_validation_split, load_dataset
from cxrdemo.data.tensor_cache import load_pixels
from cxrdemo.evaluation.metrics import auroc, report
from cxrdemo.inference.knn import embed_pixels, neighbour_probabilities
from cxrdemo.models.registry import load_model, write_model
from cxrdemo.tasks import get_task

K_CHOICES = (1, 3, 5, 7, 11, 15, 21, 31, 45)


def build_knn(
    backbone_id: str, *, data: str | None = None, out: Path, model_id: str = "knn-binary", device: str = "cpu"
) -> dict:
    """Fit k-NN on `backbone_id`'s embeddings, choose k on validation, evaluate test once, write to `out`."""
    backbone = load_model(backbone_id)
    training = backbone.card["training"]
    task = get_task(backbone.card["task"])
    dataset = load_dataset(data)
    train_side, val_side = card_validation_split(dataset, backbone.card)
    spec = backbone.preprocessing
    backbone.module.to(device)
    embed = {
        name: embed_pixels(backbone, load_pixels(dataset, frame, spec).to(device))
        for name, frame in (("train", train_side), ("val", val_side), ("test", dataset.split("test")))
    }
    y = {
        "train": dataset.targets(train_side, task),
        "val": dataset.targets(val_side, task),
        "test": dataset.targets(dataset.split("test"), task),
    }
    scored = []
    for k in K_CHOICES:
        probs, _ = neighbour_probabilities(embed["train"], y["train"], embed["val"], k, task.num_classes)
        scored.append((auroc(y["val"], probs[:, 1]), -k, k))
    _, _, best_k = max(scored)
    val_probs, _ = neighbour_probabilities(embed["train"], y["train"], embed["val"], best_k, task.num_classes)
    # equal-prior decision for vote fractions: weight each vote by 1 / its class's share of the memory,
    # i.e. positive when the positive share of the k votes reaches the memory's positive prevalence
    threshold = float(np.mean(y["train"] == 1))
    test_probs, _ = neighbour_probabilities(embed["train"], y["train"], embed["test"], best_k, task.num_classes)
    metrics = {
        "val": report(task.name, y["val"], val_probs, threshold),
        "test": report(task.name, y["test"], test_probs, threshold),
    }
    rows = []
    for split, frame, probs in (("val", val_side, val_probs), ("test", dataset.split("test"), test_probs)):
        part = pd.DataFrame(
            {
                "path": frame["path"],
                "split": split,
                "y_true": y[split],
                "label": frame["label"],
                "subtype": frame["subtype"],
            }
        )
        for i, name in enumerate(task.classes):
            part[f"prob_{name}"] = probs[:, i]
        rows.append(part)
    buffer = io.StringIO()
    pd.concat(rows).to_csv(buffer, index=False, float_format="%.6g")
    card = ModelCard(
        kind="knn",
        task=task.name,
        arch="knn",
        classes=list(task.classes),
        preprocessing=backbone.card["preprocessing"],
        threshold=threshold,
        metrics=metrics,
        training={
            "fitted_on": "training side of the backbone's patient split",
            "n_memory": int(len(y["train"])),
            "k_chosen_on": "validation AUROC",
            "val_fraction": training["val_fraction"],
            "seed": training["seed"],
        },
        data={"dataset": dataset.root.name, "manifest_fingerprint": dataset.fingerprint},
        extra={
            "backbone": backbone_id,
            "k": best_k,
            "k_selection": {str(k): float(s) for s, _, k in scored},
            "threshold_rule": "balanced_prior: positive share of the k votes >= positive share of the memory",
        },
    )
    tensors = {"embeddings": torch.from_numpy(embed["train"]), "labels": torch.from_numpy(y["train"])}
    return write_model(out, model_id, tensors, card, buffer.getvalue())
