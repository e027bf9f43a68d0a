"""Page and button icons are Streamlit Material icons: emoji render as empty boxes without an emoji font."""

from __future__ import annotations

import re
from pathlib import Path

from streamlit.material_icon_names import ALL_MATERIAL_ICONS

from cxrdemo.app.ui import PAGES

ROOT = Path(__file__).resolve().parents[1]
APP_FILES = [ROOT / "app.py", ROOT / "cxrdemo" / "app" / "ui.py", *sorted((ROOT / "pages").glob("*.py"))]
EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f]")
MATERIAL = re.compile(r":material/([a-z0-9_]+):")


def test_no_emoji_in_the_app() -> None:
    found = {f.name: EMOJI.findall(f.read_text()) for f in APP_FILES}
    assert not {name: chars for name, chars in found.items() if chars}


def test_every_material_icon_exists() -> None:
    names = [name for f in APP_FILES for name in MATERIAL.findall(f.read_text())]
    assert len(names) >= len(PAGES) + 2  # the pages' icons, the app's, the warnings' and the buttons'
    assert not [name for name in names if name not in ALL_MATERIAL_ICONS]


def test_every_page_has_a_material_icon() -> None:
    assert all(MATERIAL.fullmatch(icon) for _, _, icon in PAGES)
