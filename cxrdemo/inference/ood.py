"""Is this a chest X-ray like the training data? Two signals, each thresholded on validation.

1. The autoencoder's reconstruction error (`cxrdemo.training.anomaly`), trained on normal films only.
2. A Mahalanobis distance of simple image statistics (intensity histogram, left-right symmetry,
   gradient energy, row and column intensity profiles at 96 px) from the training images, with a
   Ledoit-Wolf covariance. Reconstruction error alone misses smooth or textured non-X-rays that an
   autoencoder reconstructs well (documents, noise, gradients); the statistics catch those.
   The statistics are taken after a per-image percentile stretch of the 96 px square, so that a chest
   X-ray whose contrast was stretched on decoding (a DICOM without window settings, a 16-bit PNG) has
   the statistics of the same film exported as JPEG: brightness and contrast are the file's, not the
   anatomy's.

An image is flagged when either signal exceeds its threshold: the 99 % quantile of the patient-grouped
validation images (normal and pneumonia). Nothing is tuned on test or on the non-X-ray images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrdemo.imaging.preprocess import resize_square

STATISTICS_SIZE = 96
QUANTILE = 0.99
# The DICOM reader's automatic window (cxrdemo.imaging.dicom.AUTO_PERCENTILES), applied to every image.
CONTRAST_PERCENTILES = (0.5, 99.5)


def normalise_contrast(pixels: torch.Tensor) -> torch.Tensor:
    """(N, S, S) uint8 -> float in [0, 1], each image stretched between its own percentiles.

    Stretching twice is stretching once, so a film and its contrast-stretched copy end up alike.
    A flat image (no spread between the percentiles) is left as it was.
    """
    x = pixels.float().flatten(1) / 255.0
    low, high = (torch.quantile(x, q / 100.0, dim=1, keepdim=True) for q in CONTRAST_PERCENTILES)
    spread = high - low
    flat = spread < 1e-3
    stretched = ((x - low) / torch.where(flat, torch.ones_like(spread), spread)).clamp(0.0, 1.0)
    return torch.where(flat, x, stretched).view(pixels.shape)


def image_statistics(pixels: torch.Tensor, *, contrast_normalised: bool = True) -> np.ndarray:
    """(N, S, S) uint8 at STATISTICS_SIZE -> (N, 38) float features.

    `contrast_normalised=False` is the first version's raw intensities, for cards fitted before.
    """
    x = normalise_contrast(pixels) if contrast_normalised else pixels.float() / 255.0
    n, h, w = x.shape
    bins = torch.clamp((x * 16).long(), max=15).view(n, -1)
    hist = F.one_hot(bins, 16).float().mean(1).sqrt()
    symmetry = (x - x.flip(-1)).abs().mean((1, 2))
    grad_x = (x[:, :, 1:] - x[:, :, :-1]).abs().mean((1, 2))
    grad_y = (x[:, 1:, :] - x[:, :-1, :]).abs().mean((1, 2))
    centre = x[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean((1, 2))
    columns = F.adaptive_avg_pool1d(x.mean(1)[:, None], 8)[:, 0]
    rows = F.adaptive_avg_pool1d(x.mean(2)[:, None], 8)[:, 0]
    scalars = torch.stack([symmetry, grad_x, grad_y, centre, x.mean((1, 2)), x.std((1, 2))], 1)
    return torch.cat([hist, scalars, columns, rows], 1).numpy().astype(np.float64)


def fit_statistics(train_pixels: torch.Tensor, val_pixels: torch.Tensor) -> dict:
    """JSON-ready model: mean, precision matrix and a validation-quantile threshold."""
    from sklearn.covariance import LedoitWolf

    model = LedoitWolf().fit(image_statistics(train_pixels))
    threshold = float(np.quantile(model.mahalanobis(image_statistics(val_pixels)), QUANTILE))
    return {
        "size": STATISTICS_SIZE,
        "mean": model.location_.tolist(),
        "precision": model.precision_.tolist(),
        "threshold": threshold,
        "rule": f"{QUANTILE:.0%} quantile of validation images (squared distance)",
        "contrast": f"per-image {CONTRAST_PERCENTILES[0]}-{CONTRAST_PERCENTILES[1]} percentile stretch",
    }


def statistics_distance(pixels: np.ndarray, model: dict) -> float:
    """Squared Mahalanobis distance of one grayscale image's statistics."""
    square = torch.from_numpy(np.array(resize_square(pixels, model["size"]), dtype=np.uint8))[None]
    features = image_statistics(square, contrast_normalised="contrast" in model)[0]
    diff = features - np.asarray(model["mean"])
    return float(diff @ np.asarray(model["precision"]) @ diff)
