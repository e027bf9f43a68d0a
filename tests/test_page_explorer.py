"""AppTest of the dataset explorer page (pages/explorer.py) on the sample and on the full dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo.data.dataset import load_dataset
from cxrdemo.paths import REPO_ROOT


def open_explorer() -> AppTest:
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/explorer.py").run()
    assert not at.exception, at.exception
    return at


def grid_images(at: AppTest) -> int:
    return sum(1 for b in at.button if b.key and b.key.startswith("open_"))


def chart_titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


@pytest.fixture()
def on_sample(monkeypatch: pytest.MonkeyPatch, sample_dir: Path):
    monkeypatch.setenv("CXRDEMO_DATA", str(sample_dir))
    return load_dataset(sample_dir)


def test_renders_on_the_sample(on_sample):
    at = open_explorer()
    assert "Dataset explorer" in at.title[0].value
    assert grid_images(at) == min(24, len(on_sample.frame))
    assert len(at.image) == grid_images(at)  # one thumbnail per Open button, nothing opened yet
    assert any(f"{len(on_sample.frame)} images match" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == 4


def test_filters_change_the_grid(on_sample):
    frame = on_sample.frame
    at = open_explorer()
    before = grid_images(at)
    at.multiselect(key="explorer_splits").set_value(["test"]).run()
    n_test = int((frame["split"] == "test").sum())
    assert grid_images(at) == n_test != before
    assert any(f"{n_test} images match" in c.value for c in at.caption)
    at.multiselect(key="explorer_labels").set_value(["NORMAL"]).run()
    assert grid_images(at) == int(((frame["split"] == "test") & (frame["label"] == "NORMAL")).sum())
    at.multiselect(key="explorer_splits").set_value([]).run()
    at.multiselect(key="explorer_labels").set_value([]).run()
    at.selectbox(key="explorer_resolution").set_value("low").run()
    assert grid_images(at) == int((frame["low_resolution_source"] == 1).sum())
    at.selectbox(key="explorer_resolution").set_value("all").run()
    patient = frame["patient_id"].iloc[0]
    at.text_input(key="explorer_patient").input(patient).run()
    assert grid_images(at) == int(frame["patient_id"].str.contains(patient, regex=False).sum())
    at.text_input(key="explorer_patient").input("no such patient").run()
    assert grid_images(at) == 0 and "No image matches" in at.info[0].value
    assert not at.exception


def test_paging(on_sample):
    at = open_explorer()
    first_page = [b.key for b in at.button if b.key and b.key.startswith("open_")]
    at.number_input(key="explorer_page").set_value(2).run()
    second_page = [b.key for b in at.button if b.key and b.key.startswith("open_")]
    assert second_page and not set(first_page) & set(second_page)
    # narrowing the filter puts the page back in range
    at.multiselect(key="explorer_splits").set_value(["val"]).run()
    assert at.number_input(key="explorer_page").value == 1 and grid_images(at) > 0
    assert not at.exception


def test_open_image_and_send_to_diagnose(on_sample):
    at = open_explorer()
    at.multiselect(key="explorer_splits").set_value(["test"]).run()
    open_button = next(b for b in at.button if b.key and b.key.startswith("open_"))
    path = open_button.key.removeprefix("open_")
    open_button.click().run()
    assert at.selectbox(key="explorer_image").value == path
    assert len(at.image) == grid_images(at) + 1  # the large image
    fields = at.table[0].value.set_index("field")["value"]
    row = on_sample.frame.set_index("path").loc[path]
    assert fields["patient"] == row["patient_id"] and fields["sha256"] == row["sha256"]
    assert fields["size"] == f"{row['width']} × {row['height']} px" and fields["duplicates"] == "none"
    assert fields["source size"] == f"{row['source_width']} × {row['source_height']} px"
    at.button(key="send_to_diagnose").click().run()
    assert not at.exception
    assert "diagnose" in at.title[0].value.lower()  # switched to the Diagnose page
    # The explorer sets session_state["diagnose_example"]; the Diagnose page takes it over at once
    # (pops it into its own "_diagnose_example"), so accept the hand-over in either place.
    if "diagnose_example" in at.session_state:
        assert at.session_state["diagnose_example"] == path
    else:
        taken = at.session_state["_diagnose_example"]
        assert taken.path == path and taken.sample is False


@pytest.mark.full_data
def test_charts_on_the_full_dataset(monkeypatch: pytest.MonkeyPatch, full_data_dir: Path):
    monkeypatch.setenv("CXRDEMO_DATA", str(full_data_dir))
    at = open_explorer()
    titles = chart_titles(at)
    assert titles == [
        "Class frequency per split",
        "Subtypes per split",
        "Source image width (px), by resolution source",
        "Distinct patients per split",
    ]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "5,856" and metrics["Patients in train and test"] == "170"
    assert metrics["Duplicate groups"] == "21" and metrics["From the 224 px copy"] == "3,577"
    traces = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    assert {trace["name"] for trace in traces} == {"NORMAL", "PNEUMONIA"}
    assert any("5856 images match" in c.value for c in at.caption)
    # a duplicate opened in the detail view is flagged
    at.text_input(key="explorer_patient").input("NORMAL2-IM-0095").run()
    at.selectbox(key="explorer_image").set_value("test/NORMAL/NORMAL2-IM-0095-0001.jpeg").run()
    assert any("NORMAL2-IM-0096-0001.jpeg" in w.value for w in at.warning)
    assert not at.exception
