"""Diagnose (the landing page): upload chest X-rays or try an example; see each model's answer and why.

Per image: the picture, a class activation heatmap beside it, the calibrated probabilities with the
operating threshold, warnings, the pneumonia subtype estimate and report downloads. An image the
out-of-distribution check flags gets "Not assessed" and the reason instead of a verdict; its
probabilities and heatmap wait in a collapsed expander. Several files
add a results table with a CSV export. Results are memoised in this session, keyed by the upload's
content hash and the installed models, so moving a slider does not recompute a prediction.

Layout of this file: the uploader first (before the backend is imported, so it shows at once), then
`sources_ui` (uploads and examples), `settings_ui` (returns the user's `Settings`), `result_ui` (one
file under those settings) and `batch_ui` (the table of several files); the page's flow is at the end.
Functions get what they use as arguments: the `Settings` and the `Installed` models, no page globals.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import streamlit as st

from cxrdemo.app.ui import active_model, page_header, page_sidebar, predictor

if TYPE_CHECKING:
    import numpy as np

    from cxrdemo.inference.predict import Prediction

log = logging.getLogger("cxrdemo.pages.diagnose")

UPLOAD_TYPES = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "gif", "dcm", "dicom"]
EXAMPLE_KEY = "_diagnose_example"  # the example on show (an Example); "diagnose_example" is the explorer's hand-over

# --- inputs --------------------------------------------------------------------------------------------
page_header("Diagnose")
upload_col, example_col = st.columns([3, 1], gap="medium")
with upload_col:
    uploads = st.file_uploader(
        "Chest X-rays",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
        key="uploads",
        help="JPEG, PNG, BMP, TIFF, WebP, GIF or DICOM. Files are analysed in memory and never stored.",
    )

# The uploader is on screen now. The backend comes next: in a fresh server its first import (torch)
# takes about 3 s on 2 cores, and the user spends that time picking a file instead of looking at a
# blank page (`python -m benchmarks.bench_app`).
from cxrdemo.app import diagnosis  # noqa: E402
from cxrdemo.app.diagnosis import COMPARE, PREDICTED, SINGLE, BatchItem, Example, Installed, Settings, memo  # noqa: E402
from cxrdemo.evaluation import report  # noqa: E402
from cxrdemo.imaging.decode import ImageLoadError, display_name, load_image  # noqa: E402
from cxrdemo.inference.explain import CAM_METHODS, overlay_heatmap  # noqa: E402
from cxrdemo.models.registry import ModelLoadError  # noqa: E402


# --- inputs --------------------------------------------------------------------------------------------
def _show_example(example: Example | None) -> None:
    st.session_state[EXAMPLE_KEY] = example


def sources_ui(installed: Installed, example_col, uploads) -> list[tuple[str, bytes]]:
    """The example buttons beside the uploader; returns (name, bytes) of the example on show and the uploads."""
    store = installed.store
    with example_col:
        st.markdown("**Or try an example**")
        try:
            examples = memo(store, "sample_examples", diagnosis.sample_examples)
        except (OSError, ValueError, KeyError):
            log.exception("diagnose: the bundled sample could not be read")
            examples = []
        for label, example in examples:
            st.button(
                f"{label} example",
                key=f"example_{label}",
                on_click=_show_example,
                args=(example,),
                width="stretch",
                help=f"{example.path} from the bundled sample",
            )
        if not examples:
            st.caption("No bundled examples found.")

    sources: list[tuple[str, bytes]] = []
    example = st.session_state.get(EXAMPLE_KEY)
    if example is not None:
        example_col.button(
            "Clear example",
            key="clear_example",
            type="tertiary",
            on_click=_show_example,
            args=(None,),
            help=f"Stop showing {example.label}",
        )
        try:
            sources.append(memo(store, ("example", example), functools.partial(diagnosis.read_example, example)))
        except (OSError, ValueError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            st.error(diagnosis.one_line(f"example {example.label} is not available: {reason}"))
    return sources + [(f.name, f.getvalue()) for f in uploads or []]


# --- settings ------------------------------------------------------------------------------------------
def settings_ui(installed: Installed, model_id: str) -> Settings:
    """The controls above the results and a caption on the active model; raises ModelLoadError."""
    pred, cards = installed.pred, installed.cards
    classes = pred.get(model_id).classes
    mode_col, method_col, target_col, opacity_col = st.columns([1.3, 1, 1, 1], gap="medium")
    mode = mode_col.radio(
        "Models",
        [SINGLE, COMPARE],
        horizontal=True,
        key="diagnose_mode",
        help=f"{SINGLE}: the active model from the sidebar. {COMPARE}: add a table of every installed model's answer.",
    )
    method = method_col.selectbox(
        "Heatmap method",
        list(CAM_METHODS),
        key="cam_method",
        help=diagnosis.cam_method_help(pred.explain_network(model_id)[0]),
    )
    target = target_col.selectbox(
        "Heatmap class", [PREDICTED, *classes], key="cam_target", help="Which class the heatmap explains."
    )
    opacity = opacity_col.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key="cam_opacity")
    show_reconstruction = False
    toggles = st.container(horizontal=True)
    show_lungs = toggles.toggle(
        "Show lung outline",
        value=True,
        key="show_lungs",
        help="The lungs the segmenter found, the window the model's input is cut from, and that input.",
    )
    if "autoencoder" in cards:
        show_reconstruction = toggles.checkbox(
            "Show autoencoder reconstruction",
            key="show_reconstruction",
            help="What the out-of-distribution autoencoder rebuilds; bright error means unlike the training X-rays.",
        )
    summary = report.model_summary(cards.get(model_id, {"id": model_id}))
    st.caption(
        f"Active model **{model_id}** (change it in the sidebar): "
        + " · ".join(f"{label[:1].lower()}{label[1:]} {value}" for label, value in summary[1:])
    )
    return Settings(model_id, mode, method, target, opacity, show_reconstruction, show_lungs)


# --- one image -----------------------------------------------------------------------------------------
def _report_bytes(build: Callable[..., bytes], *args, **kwargs) -> bytes:
    """Runs when the download button is clicked (on another thread): log failures, never show them."""
    try:
        return build(*args, **kwargs)
    except Exception:
        log.exception("diagnose: report generation failed")
        raise


def _show_probabilities(prediction: Prediction) -> None:
    """The decision rule in words and the probability bars (styled by the page's PROBABILITY_BARS_STYLE)."""
    st.caption(diagnosis.decision_text(prediction))
    st.markdown(diagnosis.probability_bars_html(prediction), unsafe_allow_html=True)


def _show_subtype(prediction: Prediction) -> None:
    if prediction.subtype:
        st.markdown("**Pneumonia subtype** (3-class subtype model)")
        for column, (name, prob) in zip(st.columns(len(prediction.subtype)), prediction.subtype.items(), strict=True):
            column.metric(name, f"{prob:.0%}")


def _show_warnings(prediction: Prediction) -> None:
    for warning in prediction.other_warnings:
        st.warning(warning, icon=":material/warning:")
    if prediction.ood is False and prediction.ood_score is not None:
        st.caption(f"Looks like a chest X-ray like the training data (autoencoder score {prediction.ood_score:.4f}).")


def _show_heatmap(
    item: BatchItem, index: int, settings: Settings, installed: Installed
) -> tuple[np.ndarray | None, str | None]:
    """The heatmap overlay (or a one-line note when it fails); returns (overlay, caption) for the reports."""
    image, prediction, model_id = item.image, item.prediction, settings.model_id
    target = diagnosis.output_class(prediction) if settings.target == PREDICTED else settings.target
    try:
        with st.spinner("Computing heatmap…"):
            heat = memo(
                installed.store,
                ("heatmap", item.digest, model_id, installed.fingerprint, settings.method, target),
                functools.partial(
                    diagnosis.heatmap, installed.pred, image.pixels, model_id, method=settings.method, target=target
                ),
            )
        overlay = overlay_heatmap(image.pixels, heat.as_float(), settings.opacity)
        explained = diagnosis.heatmap_caption(heat, settings.method)
        st.image(overlay, caption=explained, width="stretch")
        if heat.note:
            st.caption(heat.note)
        return overlay, explained
    except Exception:
        log.exception("diagnose: heatmap failed for upload %d", index)
        st.info("No heatmap for this image: internal error.")
        return None, None


def _show_image(item: BatchItem, settings: Settings, installed: Installed) -> None:
    """The upload, with the lung outline and the crop window when asked, and the square the model saw."""
    image = item.image
    caption = f"{image.name} ({image.source_format})"
    view = None
    if settings.show_lungs:
        try:
            view = memo(
                installed.store,
                ("lungs", item.digest, settings.model_id, installed.fingerprint),
                functools.partial(diagnosis.lung_view, installed.pred, image.pixels, settings.model_id),
            )
        except Exception:
            log.exception("diagnose: lung outline failed")
            st.caption("No lung outline for this image: internal error.")
    if view is None:
        st.image(image.pixels, caption=caption, width="stretch")
        return
    st.image(view.outlined, caption=f"{caption} · {view.caption}", width="stretch")
    st.image(view.model_input, caption=view.input_caption, width=160)


def _show_reconstruction(item: BatchItem, installed: Installed) -> None:
    recon = memo(
        installed.store,
        ("reconstruction", item.digest, installed.fingerprint),
        functools.partial(installed.pred.reconstruction, item.image.pixels),
    )
    if recon is not None:
        rebuilt_col, error_col, _ = st.columns([1, 1, 1.15], gap="medium")
        rebuilt_col.image(recon[0], caption="Autoencoder reconstruction", width="stretch")
        error_col.image(
            recon[1], caption="Reconstruction error (brighter = less like training X-rays)", width="stretch"
        )


def _show_reports(
    item: BatchItem, index: int, overlay: np.ndarray, explained: str | None, installed: Installed
) -> None:
    image, prediction = item.image, item.prediction
    card = installed.cards.get(prediction.model, {"id": prediction.model})
    stem = image.name.rsplit(".", 1)[0] or "image"
    with st.container(horizontal=True):
        for label, build, mime in (
            ("PNG", report.report_png, "image/png"),
            ("PDF", report.report_pdf, "application/pdf"),
        ):
            st.download_button(
                f"Report ({label})",
                functools.partial(_report_bytes, build, image, overlay, prediction, card, explained=explained),
                file_name=f"{stem}_report.{label.lower()}",
                mime=mime,
                key=f"report_{label.lower()}_{index}",
                on_click="ignore",
                icon=":material/download:",
            )


def result_ui(item: BatchItem, index: int, batch: bool, settings: Settings, installed: Installed) -> None:
    """One analysed file: verdict (or "Not assessed"), heatmap, probabilities, warnings, details, reports."""
    image, prediction = item.image, item.prediction
    if settings.mode == COMPARE:
        st.markdown("**Every installed model on this image**")
        table = memo(
            installed.store,
            ("compare", item.digest, image.name, installed.fingerprint),
            functools.partial(diagnosis.compare_frame, installed.pred, image),
        )
        st.dataframe(table, hide_index=True, key=f"compare_{index}")

    if prediction.withheld:
        # no verdict, no subtype: the reason up front, the model's output one deliberate click away
        image_col, result_col = st.columns([1, 2.15], gap="medium")
        with image_col:
            _show_image(item, settings, installed)
        with result_col:
            st.subheader(prediction.verdict)
            st.warning(prediction.withheld_reason, icon=":material/block:")
            _show_warnings(prediction)
            with st.expander("Show the model's output anyway", icon=":material/visibility:"):
                st.caption(
                    "Not a diagnosis: the models were not made for this image, so these numbers and this "
                    "heatmap say nothing reliable about it."
                )
                heat_col, output_col = st.columns(2, gap="medium")
                with heat_col:
                    overlay, explained = _show_heatmap(item, index, settings, installed)
                with output_col:
                    _show_probabilities(prediction)
                    _show_subtype(prediction)
    else:
        image_col, heat_col, result_col = st.columns([1, 1, 1.15], gap="medium")
        with image_col:
            _show_image(item, settings, installed)
        with heat_col:
            overlay, explained = _show_heatmap(item, index, settings, installed)
        with result_col:
            st.subheader(prediction.verdict)
            _show_probabilities(prediction)
            _show_warnings(prediction)
            _show_subtype(prediction)

    if settings.show_reconstruction:
        _show_reconstruction(item, installed)

    facts = diagnosis.file_facts(image)
    if batch:
        st.caption(" · ".join(f"{k}: {v}" for k, v in facts))
    else:
        with st.expander("File details"):
            st.markdown(diagnosis.facts_table(facts))

    if overlay is not None:
        _show_reports(item, index, overlay, explained, installed)


def analyse(index: int, name: str, data: bytes, batch: bool, settings: Settings, installed: Installed) -> BatchItem:
    """Decode, predict and draw one file; every failure becomes one line for the user."""
    shown = display_name(name)
    item = BatchItem(shown)
    store, model_id = installed.store, settings.model_id
    try:
        item.digest = diagnosis.digest(data)
        with st.spinner(f"Analysing {shown}…"):
            item.image = memo(store, ("image", item.digest, name), functools.partial(load_image, data, name))
            item.prediction = memo(
                store,
                ("prediction", item.digest, name, model_id, installed.fingerprint),
                functools.partial(installed.pred.predict, item.image, model_id),
            )
        item.name = item.image.name
        if batch:
            label = f"{diagnosis.markdown_escape(item.name)} — **{item.prediction.verdict}**"
            frame = st.expander(label, expanded=False)
        else:
            frame = st.container(border=True)
        with frame:
            result_ui(item, index, batch, settings, installed)
    except ImageLoadError as err:
        item.error = diagnosis.one_line(err)
        st.error(item.error)
    except ModelLoadError as err:
        item.error = diagnosis.one_line(err)
        st.error(item.error)
    except Exception:
        # The user gets one line; the traceback goes to the server log, without the file's name or content.
        log.exception("diagnose: analysis failed for upload %d", index)
        item.error = f"could not analyse {shown}: internal error"
        st.error(item.error)
    return item


# --- several files -------------------------------------------------------------------------------------
def batch_ui(items: list[BatchItem], settings: Settings) -> None:
    """How many files were analysed, the results table and its CSV."""
    analysed = sum(item.prediction is not None for item in items)
    st.markdown(f"**{analysed} of {len(items)} files analysed** with {settings.model_id}")
    table = diagnosis.batch_frame(items)
    probability_columns = {
        c: st.column_config.NumberColumn(c, format="%.3f") for c in table.columns if c.startswith("P(")
    }
    shown = [c for c in table.columns if c not in ("model", "ood_score")]  # both stay in the CSV
    st.dataframe(
        table,
        hide_index=True,
        key="batch_results",
        row_height=64,
        column_order=shown,
        column_config={"image": st.column_config.ImageColumn("image", width="small"), **probability_columns},
    )
    st.download_button(
        "Download results (CSV)",
        diagnosis.batch_csv(items),
        file_name="cxrdemo_results.csv",
        mime="text/csv",
        key="batch_csv",
        on_click="ignore",
        icon=":material/download:",
    )


# --- the page ------------------------------------------------------------------------------------------
pred = predictor()
page_sidebar(pred)
active = active_model(pred)
if active is None:
    st.info("No binary classifier is installed yet: train and promote one on the Admin page.")
    st.stop()
installed = Installed(pred, pred.cards(), st.session_state.setdefault("_diagnose_memo", {}))

# The Dataset explorer sets a manifest path and switches here; take it over so it stays until cleared.
handed_over = st.session_state.pop("diagnose_example", None)
if handed_over:
    st.session_state[EXAMPLE_KEY] = Example(str(handed_over), sample=False)

# Everything a first answer draws, drawn before there is one: the settings row, and (invisible) the bars'
# style through the HTML-enabled Markdown the bars use. The browser loads each kind of element's code on
# its first appearance: on a fresh page that loading cost the first upload 0.4 s on 2 cores, and it now
# happens while the user picks a file (`python -m benchmarks.bench_app`). The file details are a Markdown
# table for the same reason (a dataframe's code alone is some 20 files).
st.markdown(diagnosis.PROBABILITY_BARS_STYLE, unsafe_allow_html=True)
sources = sources_ui(installed, example_col, uploads)
try:
    settings = settings_ui(installed, active)
except ModelLoadError as err:
    st.error(diagnosis.one_line(err))
    st.stop()
if not sources:
    st.info("Upload one or more chest X-rays, or try an example, to see what the models make of them.")
    st.stop()

batch = len(sources) > 1
summary_area = st.container()
items = [analyse(index, name, data, batch, settings, installed) for index, (name, data) in enumerate(sources)]
if batch:
    with summary_area:
        batch_ui(items, settings)
