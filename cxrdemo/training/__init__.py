"""Training: one loop (`loop.fit`) for every classifier and the autoencoder, resumable from any epoch.

    python -m cxrdemo train --arch resnet18 --task binary --epochs 30 --out runs/r18
    python -m cxrdemo train --resume runs/r18          # continues where a killed run stopped

`config` (the frozen recipe), `data` (decode once, patient-grouped validation), `objectives` (what a
step minimises and how validation is scored), `loop` (train_one_epoch, evaluate, fit), `callbacks`
(checkpoint, early stopping, progress bar, JSON log), `checkpoint` (atomic per-epoch state), `run`
(builds the pieces from a config and returns a `TrainResult`).
"""

from cxrdemo.training.config import TrainConfig
from cxrdemo.training.run import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
