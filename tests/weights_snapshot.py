"""A consistent private copy of the shipped weights for tests that read them."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from cxrdemo.paths import REPO_ROOT
from cxrdemo.registry import list_cards, sha256_file


def snapshot_weights(target: Path) -> Path:
    """Copy the shipped weights; copy again if a promotion was caught halfway (card and weights disagree)."""
    for _ in range(5):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(REPO_ROOT / "weights", target, ignore=shutil.ignore_patterns(".rollback"))
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
