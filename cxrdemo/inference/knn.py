"""k-nearest neighbours on L2-normalised penultimate-layer embeddings of a trained backbone: inference.

The stored "memory" is the training embeddings (fp16) and their labels; `cxrdemo.training.knn_build` fits it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrdemo.inference.forward import embeddings
from cxrdemo.models.registry import LoadedModel


def embed_pixels(backbone: LoadedModel, pixels: torch.Tensor) -> np.ndarray:
    """L2-normalised embeddings (N, D) float32 for uint8 pixels (N, S, S)."""
    return embeddings(backbone.module, pixels, backbone.preprocessing)


def neighbour_probabilities(
    memory: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities (N, C), mean cosine distance to the k neighbours (N,))."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(k, len(memory)), metric="euclidean")
    knn.fit(memory, labels)
    distances, index = knn.kneighbors(queries)
    votes = labels[index]
    probs = np.stack([(votes == c).mean(1) for c in range(num_classes)], 1)
    return probs, (distances**2 / 2).mean(1)  # unit vectors: squared euclidean / 2 = cosine distance


def memory_probabilities(model: LoadedModel, queries: np.ndarray) -> np.ndarray:
    """Class probabilities (N, C) of L2-normalised query embeddings against an installed k-NN's memory."""
    memory = F.normalize(model.tensors["embeddings"].float(), dim=1).numpy()  # stored as fp16: renormalise
    labels = model.tensors["labels"].numpy()
    return neighbour_probabilities(memory, labels, queries, int(model.card["k"]), len(model.classes))[0]
