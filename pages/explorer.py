"""Dataset explorer: browse the images of the dataset in use and see its statistics.

Filters -> `explore.filter_frame`; a paged thumbnail grid; one image opened large with its manifest
row and a "Send to Diagnose" button; charts of classes, subtypes, sizes, patients and duplicates.
Every file is reached from a manifest path through `Dataset.absolute` (in `cxrdemo.evaluation.explore`).
"""

from __future__ import annotations

import streamlit as st

from cxrdemo.app import charts
from cxrdemo.app.ui import page_frame
from cxrdemo.data.dataset import Dataset, load_dataset
from cxrdemo.evaluation import explore
from cxrdemo.paths import data_dir

GRID_COLUMNS = 6
IMAGE_KEY = "explorer_image"
PAGE_KEY = "explorer_page"


@st.cache_data(show_spinner=False, max_entries=4)
def dataset_at(root: str) -> Dataset:
    return load_dataset(root)


@st.cache_data(show_spinner="Computing dataset statistics…", max_entries=4)
def overview_of(root: str, fingerprint: str) -> dict:
    dataset = dataset_at(root)
    return explore.overview(dataset.frame, dataset)


@st.cache_data(show_spinner=False, max_entries=3000)
def thumbnail_of(root: str, path: str, size: int, square: bool = False) -> bytes:
    return explore.dataset_thumbnail(dataset_at(root), path, size, square=square)


def open_image(path: str) -> None:
    st.session_state[IMAGE_KEY] = path


def filters_ui(choices: dict) -> dict:
    """Filter widgets; returns keyword arguments for `explore.filter_frame`."""
    cols = st.columns([1, 1, 1.3, 1.4, 1.2])
    splits = cols[0].multiselect("Split", choices["splits"], key="explorer_splits", placeholder="all")
    labels = cols[1].multiselect("Label", choices["labels"], key="explorer_labels", placeholder="all")
    subtypes = cols[2].multiselect("Subtype", choices["subtypes"], key="explorer_subtypes", placeholder="all")
    resolution = cols[3].selectbox(
        "Resolution source",
        choices["resolutions"],
        key="explorer_resolution",
        format_func=explore.RESOLUTION_LABELS.get,
    )
    patient = cols[4].text_input(
        "Patient id contains", key="explorer_patient", max_chars=40, placeholder="e.g. person1"
    )
    return {"splits": splits, "labels": labels, "subtypes": subtypes, "resolution": resolution, "patient": patient}


def grid_ui(root: str, frame) -> None:
    """Paged thumbnail grid with an Open button per image."""
    n_pages = explore.page_of(frame, 1)[1]
    if st.session_state.get(PAGE_KEY, 1) > n_pages:  # filters shrank the result
        st.session_state[PAGE_KEY] = n_pages
    left, right = st.columns([1, 4], vertical_alignment="bottom")
    page = left.number_input("Page", min_value=1, max_value=n_pages, step=1, key=PAGE_KEY)
    rows, _ = explore.page_of(frame, page)
    first = (page - 1) * explore.PAGE_SIZE + 1
    right.caption(f"{len(frame)} images match · page {page} of {n_pages} · showing {first}–{first + len(rows) - 1}")
    for start in range(0, len(rows), GRID_COLUMNS):
        cols = st.columns(GRID_COLUMNS)
        for col, (_, row) in zip(cols, rows.iloc[start : start + GRID_COLUMNS].iterrows()):
            with col:
                st.image(thumbnail_of(root, row["path"], explore.THUMBNAIL_PX, square=True), width="stretch")
                st.button(
                    "Open",
                    key=f"open_{row['path']}",
                    on_click=open_image,
                    args=(row["path"],),
                    width="stretch",
                    help=row["path"],
                )
                st.caption(f"{row['split']} · {row['subtype']} · {row['patient_id']}")


def detail_ui(root: str, dataset: Dataset, frame) -> None:
    """One image large, its manifest row, duplicates, and the hand-off to Diagnose."""
    paths = frame["path"].tolist()
    if st.session_state.get(IMAGE_KEY) not in paths:
        st.session_state.pop(IMAGE_KEY, None)
    selected = st.selectbox(
        "Image", paths, index=None, key=IMAGE_KEY, placeholder="Pick an image here or press Open under a thumbnail"
    )
    if selected is None:
        return
    info = explore.record(dataset, selected)
    left, right = st.columns([1, 1])
    left.image(thumbnail_of(root, selected, explore.DETAIL_PX), caption=selected, width="stretch")
    with right:
        st.table(explore.record_rows(info), hide_index=True, hide_header=True)
        if info["duplicates"]:
            st.warning(f"Byte-identical to {len(info['duplicates'])} other file(s): " + ", ".join(info["duplicates"]))
        if st.button("Send to Diagnose", type="primary", icon=":material/radiology:", key="send_to_diagnose"):
            st.session_state["diagnose_example"] = selected
            st.switch_page("pages/diagnose.py")


def statistics_ui(stats: dict) -> None:
    """Charts and tables of the whole dataset."""
    shared = stats["shared_patients"]
    cols = st.columns(5)
    cols[0].metric("Images", f"{stats['images']:,}")
    cols[1].metric("Patients", f"{stats['patients']:,}")
    cols[2].metric("From the 224 px copy", f"{stats['low_resolution']:,}")
    cols[3].metric("Patients in train and test", len(shared))
    cols[4].metric("Duplicate groups", stats["duplicate_groups"], help="groups of byte-identical files")

    left, right = st.columns(2)
    left.plotly_chart(charts.class_frequency_figure(stats["class_counts"]), key="chart_classes")
    right.plotly_chart(charts.subtype_figure(stats["subtype_counts"]), key="chart_subtypes")
    left, right = st.columns(2)
    left.plotly_chart(charts.source_width_figure(stats["sizes"]), key="chart_sizes")
    right.plotly_chart(charts.patients_figure(stats["patients_per_split"]), key="chart_patients")

    st.markdown(
        f"**{len(shared)} patients have images in both train and test** (the official split was not "
        "made by patient; regroup on `patient_id` to split by patient)."
    )
    with st.expander(f"Patients shared between train and test ({len(shared)})"):
        st.dataframe(shared, hide_index=True, width="stretch")
    duplicates = stats["duplicates"]
    st.markdown(
        f"**Duplicate files:** {stats['duplicate_groups']} groups of byte-identical images ({len(duplicates)} files)."
    )
    if len(duplicates):
        st.dataframe(
            duplicates,
            hide_index=True,
            width="stretch",
            column_config={"sha256": st.column_config.TextColumn("sha256", width="small")},
        )


page_frame("Dataset explorer")
root = str(data_dir())
try:
    dataset = dataset_at(root)
except (FileNotFoundError, ValueError, KeyError) as err:
    st.error(f"Cannot read the dataset at {root}: {err}")
    st.stop()

browse, statistics = st.tabs(["Browse", "Statistics"])
with browse:
    filtered = explore.filter_frame(dataset.frame, **filters_ui(explore.options(dataset.frame)))
    if filtered.empty:
        st.info("No image matches these filters.")
    else:
        grid_ui(root, filtered)
        st.divider()
        detail_ui(root, dataset, filtered)
with statistics:
    statistics_ui(overview_of(root, dataset.fingerprint))
