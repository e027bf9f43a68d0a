"""The one way tests copy weights: a consistent private copy (never a promotion caught halfway)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from cxrdemo.models.registry import list_cards, sha256_file
from cxrdemo.paths import weights_dir


def snapshot_weights(target: Path, source: Path | None = None) -> Path:
    """Copy `source` (default: the weights folder in use) without its rollback copies, as in a clean clone;
    copy again if a promotion was caught halfway (a card and its weights disagree)."""
    source = source or weights_dir()
    for _ in range(5):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(".rollback"))
        cards = list_cards(target)
        if all(
            "error" not in card
            and (
                not card.get("weights_sha256")
                or sha256_file(target / f"{model_id}.safetensors") == card["weights_sha256"]
            )
            for model_id, card in cards.items()
        ):
            break
        time.sleep(2)
    return target
