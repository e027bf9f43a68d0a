"""The training recipe: a frozen dataclass of defaults; the CLI is a thin layer over it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch

from cxrdemo.imaging.augment import AugmentConfig
from cxrdemo.imaging.preprocess import Preprocessing, lung_crop_spec


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "resnet18"
    task: str = "binary"  # binary | subtype (ignored by the autoencoder, which sees NORMAL only)
    data: str | None = None  # dataset folder; None -> CXRDEMO_DATA, then the bundled sample
    out: str = "runs/latest"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3  # peak of the one-cycle schedule
    weight_decay: float = 0.05
    schedule: str = "onecycle"  # onecycle (warmup + cosine) | cosine (no warmup) | constant
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.05
    class_balanced: bool = True  # weight the loss by inverse class frequency
    grad_clip: float = 2.0
    ema_decay: float = 0.0  # >0 keeps an exponential moving average of the weights and judges it
    mixup_alpha: float = 0.0
    patience: int = 10  # epochs without validation improvement before stopping
    # "best": the epoch with the best validation score; "last": the final weights. Validation AUROC
    # saturates near 0.997 on this data, so "best" is decided by a handful of images (docs/DECISIONS.md)
    select: str = "best"
    val_fraction: float = 0.15
    subset: int | None = None  # train on a stratified subset of N training images (smoke runs)
    input_size: int = 224
    # squash (whole image) | lung_crop (the lungs' box plus a margin: no frame shortcut, docs/DECISIONS.md)
    resize: str = "squash"
    device: str = "auto"  # auto | cuda | cpu
    precision: str = "auto"  # auto (bf16 where native: CUDA, or a CPU with AVX512-BF16/AMX) | bf16 | fp32
    channels_last: bool = True
    threads: int | None = None  # torch intra-op threads on the CPU (None: torch's default)
    compile: bool = False
    seed: int = 0  # the validation split, and the weights unless `weights_seed` is set
    # initialisation, augmentation and batch order; None: `seed`. Lets copies differ while sharing one split
    weights_seed: int | None = None
    seeds: int = 1  # >1: that many copies (weights seeds seed, seed+1, ...) answer as one model, averaged
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def init_seed(self) -> int:
        """The seed of the weights, the augmentation and the batch order."""
        return self.seed if self.weights_seed is None else self.weights_seed

    def to_dict(self) -> dict:
        return asdict(self)

    def preprocessing(self) -> Preprocessing:
        """How this run's images become model input (the autoencoder always sees the whole image)."""
        if self.resize == "lung_crop" and self.arch != "autoencoder":
            return lung_crop_spec(self.input_size)
        return Preprocessing(input_size=self.input_size)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Rebuild from `to_dict()` output (a run's config.json); unknown keys from older runs are ignored."""
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in values.items() if k in known}
        if isinstance(kept.get("augment"), dict):
            aug = dict(kept["augment"])
            for name in ("scale", "gamma"):
                if name in aug:
                    aug[name] = tuple(aug[name])
            kept["augment"] = AugmentConfig(**aug)
        return cls(**kept)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(name)
