"""Train, promote and combine the whole shipped model zoo in one go.

    python -m cxrdemo.zoo --profile gpu --data ../shared/data/chest_xray   # the full plan (an H100: minutes)
    python -m cxrdemo.zoo --profile cpu --data ../shared/data/chest_xray   # interim CPU models at low resolution

Each step is an ordinary `python -m cxrdemo train` run followed by `promote`, so a GPU machine and
the admin page go through exactly the same code.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from cxrdemo.cli import train_command
from cxrdemo.finalize import default_model_id

# (arch, task, extra train arguments) per profile
PLANS: dict[str, list[tuple[str, str, list[str]]]] = {
    "gpu": [
        ("resnet18", "binary", ["--epochs", "40", "--ema-decay", "0.999", "--mixup-alpha", "0.2"]),
        ("zubinrnet", "binary", ["--epochs", "40", "--ema-decay", "0.999"]),
        ("resnet50", "binary", ["--epochs", "30", "--ema-decay", "0.999"]),
        ("vgg16", "binary", ["--epochs", "30", "--lr", "5e-4"]),
        ("cnn4", "binary", ["--epochs", "40"]),
        ("cnn4", "subtype", ["--epochs", "40"]),
        ("resnet18", "subtype", ["--epochs", "40", "--ema-decay", "0.999"]),
        ("autoencoder", "binary", ["--epochs", "40", "--lr", "1e-3"]),
    ],
    # exactly what produced the interim weights shipped in this repository (2 CPU cores, docs/RESULTS.md)
    "cpu": [
        ("zubinrnet", "binary", ["--epochs", "8", "--input-size", "96", "--patience", "4"]),
        ("autoencoder", "binary", ["--epochs", "6", "--input-size", "96", "--lr", "2e-3"]),
        ("cnn4", "binary", ["--epochs", "5", "--input-size", "96", "--patience", "3"]),
        ("cnn4", "subtype", ["--epochs", "5", "--input-size", "96", "--patience", "3"]),
        ("resnet18", "binary", ["--epochs", "6", "--input-size", "96", "--patience", "3", "--ema-decay", "0.99"]),
        ("resnet18", "subtype", ["--epochs", "6", "--input-size", "96", "--patience", "3", "--ema-decay", "0.99"]),
    ],
}


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PLANS), default="gpu")
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", default="runs/zoo")
    parser.add_argument("--only", nargs="*", help="ARCH-TASK ids to train (default: the whole plan)")
    parser.add_argument("--knn-backbone", default=None, help="binary model whose embeddings k-NN uses")
    args = parser.parse_args(argv)
    py = sys.executable
    trained = []
    for arch, task, extra in PLANS[args.profile]:
        model_id = default_model_id(arch, task)
        if args.only and model_id not in args.only:
            continue
        out = Path(args.runs) / model_id
        start = time.time()
        run(train_command(arch, task, data=args.data, out=out, extra=extra))
        run([py, "-m", "cxrdemo", "promote", str(out)])
        trained.append((model_id, round(time.time() - start)))
    backbone = args.knn_backbone or ("resnet18-binary" if args.profile == "gpu" else "zubinrnet-binary")
    run([py, "-m", "cxrdemo", "build-knn", "--backbone", backbone, "--data", args.data])
    run([py, "-m", "cxrdemo", "build-ensemble"])
    run([py, "-m", "cxrdemo", "models"])
    for model_id, seconds in trained:
        print(f"{model_id:<22}{seconds:>6} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
