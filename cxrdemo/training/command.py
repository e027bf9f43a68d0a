"""The `python -m cxrdemo train` command line: its options, the config they give, and the subprocess
command that admin jobs and the campaign launch."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from cxrdemo.fileio import read_json
from cxrdemo.training.config import TrainConfig


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `python -m cxrdemo train`."""
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last epoch checkpoint")
    p.add_argument("--arch")
    p.add_argument("--task", choices=["binary", "subtype"])
    p.add_argument("--data")
    # unset options take TrainConfig's defaults (cxrdemo/training/config.py), the one place they live
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-fraction", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"])
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    p.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False)
    p.add_argument("--threads", type=int)
    p.add_argument("--subset", type=int)
    p.add_argument("--input-size", type=int)
    p.add_argument("--resize", choices=["squash", "lung_crop"])
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--mixup-alpha", type=float)
    p.add_argument("--patience", type=int)
    p.add_argument("--select", choices=["best", "last"])
    p.add_argument("--seed", type=int, help="seed of the validation split (and of the weights, by default)")
    p.add_argument("--weights-seed", type=int, help="seed of the initialisation, augmentation and batch order")
    p.add_argument("--seeds", type=int, help="train N copies (weights seeds SEED..SEED+N-1), shipped as their average")
    p.add_argument("--compile", action="store_const", const=True)
    p.add_argument("--id", help="model id written into the card (default ARCH-TASK)")
    p.add_argument("--out", help="run directory")
    return p


def train_config(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The run's TrainConfig: from RUN_DIR/config.json with --resume, else from the options given."""
    if args.resume:
        path = Path(args.resume) / "config.json"
        if not path.exists():
            raise ValueError(f"{args.resume} is not a training run (no config.json)")
        return TrainConfig.from_dict({**read_json(path), "out": str(args.resume)}), True
    if not args.arch or not args.out:
        raise ValueError("train needs --arch and --out (or --resume RUN_DIR)")
    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in known and v is not None}
    return TrainConfig(**values), False


def train_command(
    arch: str, task: str, *, data: str | Path, out: str | Path, extra: list[str] | None = None
) -> list[str]:
    """The `python -m cxrdemo train` command line that admin jobs and the zoo launch as a subprocess."""
    return [
        sys.executable,
        "-m",
        "cxrdemo",
        "train",
        "--arch",
        arch,
        "--task",
        task,
        "--data",
        str(data),
        "--out",
        str(out),
        *(extra or []),
    ]


def parse_train_args(argv: list[str]) -> tuple[TrainConfig, bool]:
    """(config, resume) for the arguments after `train`."""
    return train_config(add_train_arguments(argparse.ArgumentParser(prog="cxrdemo train")).parse_args(argv))
