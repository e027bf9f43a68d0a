"""The training campaign: train, promote and combine the whole shipped model zoo, resumably.

    CXRDEMO_RUNS=$HOME/cxrdemo-campaign python -m cxrdemo.zoo --profile cpu --data ../shared/data/chest_xray
    python -m cxrdemo.zoo --profile cpu --data ../shared/data/chest_xray --dry-run   # what would happen

Each model of the plan is an ordinary `python -m cxrdemo train` run followed by `promote`, so the
admin page, a GPU box and this campaign go through the same code. Run it again at any time: a model
whose installed card was trained with exactly the planned recipe is skipped, a run that was killed is
resumed from its last epoch checkpoint (`train --resume`), a finished but unpromoted run is promoted,
unless the replacement gate kept the shipped model (`gate.json` in the run folder, `record_gate`).
After every promotion the models built on top of others (k-NN, ensemble) are rebuilt, so the shipped
set always agrees with itself. Run it from a separate `git worktree`, with the runs folder outside
any work tree, so that editing and testing in the foreground cannot break it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cxrdemo.fileio import atomic_write_json, read_json
from cxrdemo.models.registry import load_card
from cxrdemo.paths import weights_dir
from cxrdemo.training.command import parse_train_args, train_command
from cxrdemo.training.config import TrainConfig
from cxrdemo.training.finalize import default_model_id

Plan = list[tuple[str, str, list[str]]]  # (arch, task, extra `train` arguments)

# 2 CPU cores with native bf16 (AMX / AVX512-BF16): budgets from `python -m benchmarks.bench_training`
# (2026-12-05, AMD EPYC with AVX512-BF16, batch 32: resnet18 at 224 px 34 images/s in bf16, resnet50 at
# 192 px 16, vgg16 at 96 px 23; docs/RESULTS.md).
# Every classifier ships its final EMA weights ("--select last") and the equal-prior threshold:
# the decision rules of docs/DECISIONS.md, written before any of these models saw the test split.
# The ResNet-18 subtype model and VGG-16 have budgets that fit in one 3-hour session on an fp32-only
# (AVX2) machine; ResNet-50 (192 px, 12 epochs, ~65 min) fits one on a bf16 machine (2026-12-05 addendum
# of docs/DECISIONS.md):
# sessions rarely get their machine back (session 6 got a fresh one, and a 224 px run at epoch 2
# was lost), so a run that needs two sessions usually never lands.


def cpu_recipe(size: int, epochs: int, ema: float, *more: str, resize: str = "lung_crop") -> list[str]:
    """The lung crop, bf16 where native, batch 64, final EMA weights, no early stop (a fixed budget)."""
    return [
        *("--resize", resize, "--precision", "auto", "--select", "last", "--batch-size", "64", "--patience", "99"),
        *("--input-size", str(size), "--epochs", str(epochs), "--ema-decay", str(ema), *more),
    ]


# The lung-crop campaign (docs/DECISIONS.md, 2026-12-06): the default model first, then the cheap models
# (each lands within a session), then VGG-16 and ResNet-50 (about an hour each on 2 bf16 cores).
PLANS: dict[str, Plan] = {
    "cpu": [
        ("resnet18", "binary", cpu_recipe(224, 20, 0.995)),
        ("zubinrnet", "binary", cpu_recipe(224, 20, 0.995)),
        # the squash model of 2026-12-04: its lung-crop run and the 3-seed lung-crop average (REJECTED below)
        # failed the replacement gate
        ("cnn4", "binary", cpu_recipe(128, 20, 0.99, resize="squash")),
        ("cnn4", "subtype", cpu_recipe(128, 20, 0.99)),
        ("resnet18", "subtype", cpu_recipe(192, 12, 0.99)),
        # VGG-16 and ResNet-50 stay the squash models of 2026-12-05: their lung-crop runs (REJECTED below)
        # failed the replacement gate, so this is the recipe that made the shipped weights (ResNet-50's
        # residual branches were initialised like torchvision's then; a rerun starts them at zero)
        ("vgg16", "binary", cpu_recipe(96, 8, 0.99, "--lr", "5e-4", resize="squash")),
        ("resnet50", "binary", cpu_recipe(192, 12, 0.995, resize="squash")),
        # the autoencoder keeps the whole image (it judges the whole film) and its 2026-12-04 weights
        ("autoencoder", "binary", ["--precision", "fp32", "--input-size", "96", "--epochs", "24", "--lr", "2e-3"]),
    ],
    # a minute on the bundled sample: the campaign's own test (tests/test_campaign.py)
    "smoke": [
        ("cnn4", "binary", ["--input-size", "48", "--epochs", "2", "--subset", "30", "--batch-size", "8"]),
        ("autoencoder", "binary", ["--input-size", "48", "--epochs", "1", "--batch-size", "8"]),
    ],
    "gpu": [
        ("resnet18", "binary", ["--epochs", "40", "--ema-decay", "0.999", "--mixup-alpha", "0.2", "--select", "last"]),
        ("zubinrnet", "binary", ["--epochs", "40", "--ema-decay", "0.999", "--select", "last"]),
        ("cnn4", "binary", ["--epochs", "40", "--select", "last"]),
        ("resnet18", "subtype", ["--epochs", "40", "--ema-decay", "0.999", "--select", "last"]),
        ("resnet50", "binary", ["--epochs", "30", "--ema-decay", "0.999", "--select", "last"]),
        ("vgg16", "binary", ["--epochs", "30", "--lr", "5e-4", "--select", "last"]),
        ("cnn4", "subtype", ["--epochs", "40", "--select", "last"]),
        ("autoencoder", "binary", ["--epochs", "40", "--lr", "1e-3"]),
    ],
}
# Lung-crop recipes that were trained and turned down by the replacement gate (docs/DECISIONS.md, rule 4 of
# the lung-crop campaign; outcomes of 2026-12-07): the shipped model stayed, and its card says so under
# `replacement_gate`. Kept here so that the attempt can be rerun (`--profile rejected`).
REJECTED: Plan = [
    # three seeds averaged as one model (docs/DECISIONS.md, addendum of 2026-12-07); the one-seed lung-crop
    # run before it failed too (-0.0066)
    ("cnn4", "binary", cpu_recipe(128, 20, 0.99, "--seeds", "3")),
    ("vgg16", "binary", cpu_recipe(128, 10, 0.99, "--lr", "5e-4")),
    # the 2026-12-05 recipe (lr 2e-3, 10 % warm-up, no zero-init) collapsed mid-run: lower peak, longer
    # warm-up, zero-initialised residual branches (cxrdemo/models/architectures.py)
    ("resnet50", "binary", cpu_recipe(192, 12, 0.995, "--lr", "1e-3", "--warmup-fraction", "0.2")),
]
PLANS["rejected"] = REJECTED
KNN_BACKBONE = "resnet18-binary"  # fixed in advance: the default model
ENSEMBLE_MEMBERS = ("resnet18-binary", "resnet50-binary", "vgg16-binary", "zubinrnet-binary")
# a member joins the ensemble only if its shipped weights reach this validation AUROC (docs/DECISIONS.md,
# addendum of 2026-12-04): the trained members sit at 0.997-0.998, so this only keeps out a run that failed
MEMBER_MIN_VAL_AUROC = 0.98
IGNORED_KEYS = ("out", "data", "threads", "device")  # where and how fast, not what is trained


def run(cmd: list[str], dry_run: bool = False) -> None:
    print("+", " ".join(cmd), flush=True)
    if not dry_run:
        subprocess.run(cmd, check=True)


def planned_config(arch: str, task: str, extra: list[str], out: Path, data: str) -> dict:
    """The TrainConfig (as a dict) that `train` would run for this plan entry."""
    argv = train_command(arch, task, data=data, out=out, extra=extra)[4:]  # after "python -m cxrdemo train"
    cfg, _ = parse_train_args(argv)
    return cfg.to_dict()


def same_recipe(recorded: dict, planned: dict) -> bool:
    """Whether a run's config (or an installed card's `training`, which adds results) is the planned recipe.

    A field the record predates (e.g. `resize`) counts as that field's default, which is what ran.
    """
    defaults = TrainConfig().to_dict()
    return all(
        json.dumps(recorded.get(k, defaults.get(k))) == json.dumps(planned[k]) for k in set(planned) - set(IGNORED_KEYS)
    )


def installed_recipe(model_id: str) -> dict | None:
    path = weights_dir() / f"{model_id}.json"
    return read_json(path).get("training") if path.exists() else None


GATE_FILE = "gate.json"  # in a finished run: the replacement gate's decision (docs/DECISIONS.md, rule 4)
KEEP_SHIPPED = "keep shipped"


def gate_decision(run_dir: Path) -> str | None:
    """The decision, "replace" or KEEP_SHIPPED, when the gate has judged the run's weights, else None."""
    path, card = run_dir / GATE_FILE, run_dir / "card.json"
    if not path.exists() or not card.exists():
        return None
    gate = read_json(path)
    return gate.get("decision") if gate.get("weights_sha256") == read_json(card).get("weights_sha256") else None


def record_gate(run_dir: Path, decision: str, evidence: dict) -> None:
    """Write the replacement gate's decision for a finished run (its card names the weights judged)."""
    if decision not in ("replace", KEEP_SHIPPED):
        raise ValueError(f"decision must be 'replace' or {KEEP_SHIPPED!r}")
    sha = read_json(run_dir / "card.json")["weights_sha256"]
    atomic_write_json(run_dir / GATE_FILE, {"decision": decision, "weights_sha256": sha, **evidence})


def step_for(run_dir: Path, planned: dict, model_id: str) -> str:
    """What the campaign does for one model: skip | kept | promote | resume | train.

    "kept": the run finished with the planned recipe but failed the replacement gate, so the shipped
    model stays and nothing is done (the plan still produced what is shipped).
    """
    installed = installed_recipe(model_id)
    if installed and same_recipe(installed, planned):
        return "skip"
    config = run_dir / "config.json"
    if config.exists() and same_recipe(read_json(config), planned):
        status = read_json(run_dir / "status.json") if (run_dir / "status.json").exists() else {}
        if status.get("state") == "finished" and (run_dir / "card.json").exists():
            return "kept" if gate_decision(run_dir) == KEEP_SHIPPED else "promote"
        return "resume"
    return "train"


def ensemble_members(installed: set[str]) -> list[str]:
    """The fixed members that are installed and pass the validation gate (never a test number)."""
    members = []
    for model_id in ENSEMBLE_MEMBERS:
        if model_id not in installed:
            continue
        auroc = load_card(model_id).get("metrics", {}).get("val", {}).get("roc_auc", {})
        if isinstance(auroc, dict) and (auroc.get("value") or 0.0) >= MEMBER_MIN_VAL_AUROC:
            members.append(model_id)
        else:
            print(f"== {model_id}: validation AUROC below {MEMBER_MIN_VAL_AUROC}, left out of the ensemble", flush=True)
    return members


def rebuild_dependents(promoted: str, data: str, py: str, dry_run: bool) -> None:
    """After `promoted` changed: k-NN on the fixed backbone, the ensemble of the fixed members installed so far."""
    installed = {p.stem for p in weights_dir().glob("*.json")}
    if promoted == KNN_BACKBONE:
        run([py, "-m", "cxrdemo", "build-knn", "--backbone", KNN_BACKBONE, "--data", data], dry_run)
    members = ensemble_members(installed)
    if promoted in ENSEMBLE_MEMBERS and members:
        run([py, "-m", "cxrdemo", "build-ensemble", "--members", *members], dry_run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PLANS), default="cpu")
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", default=None, help="run folders (default: $CXRDEMO_RUNS/zoo-PROFILE)")
    parser.add_argument("--only", nargs="*", help="model ids to train (default: the whole plan)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps without running them")
    parser.add_argument(
        "--hold", action="store_true", help="train and finalize only; promotion waits for the frame gates"
    )
    args = parser.parse_args(argv)
    runs = Path(args.runs or Path(os.environ.get("CXRDEMO_RUNS", "runs")) / f"zoo-{args.profile}")
    py = sys.executable
    done = []
    for arch, task, extra in PLANS[args.profile]:
        model_id = default_model_id(arch, task)
        if args.only and model_id not in args.only:
            continue
        run_dir = runs / model_id
        planned = planned_config(arch, task, extra, run_dir, args.data)
        step = step_for(run_dir, planned, model_id)
        print(f"== {model_id}: {step}", flush=True)
        if step in ("skip", "kept"):
            continue
        start = time.time()
        if step == "train" and run_dir.exists() and not args.dry_run:
            shutil.move(run_dir, run_dir.with_name(f"{model_id}.replaced-{int(start)}"))  # an older recipe
        if step == "train":
            run(train_command(arch, task, data=args.data, out=run_dir, extra=extra), args.dry_run)
        elif step == "resume":
            run([py, "-m", "cxrdemo", "train", "--resume", str(run_dir)], args.dry_run)
        if args.hold:
            done.append((model_id, step, round(time.time() - start)))
            continue
        run([py, "-m", "cxrdemo", "promote", str(run_dir)], args.dry_run)
        rebuild_dependents(model_id, args.data, py, args.dry_run)
        done.append((model_id, step, round(time.time() - start)))
    run([py, "-m", "cxrdemo", "models"], args.dry_run)
    for model_id, step, seconds in done:
        print(f"{model_id:<22}{step:<9}{seconds:>7} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
