"""What the Diagnose page computes and tabulates, without Streamlit.

The page gathers files and settings with widgets and calls these functions: which network explains a
model (the ensemble and k-NN have none of their own), heatmaps, the batch and
compare-all tables, CSV export, thumbnails and the bundled examples. `memo` is a small LRU over a
mapping the page keeps in its session state, so results are reused across reruns of one session and
forgotten with it (uploads never land in a cache shared between users).
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Callable, Hashable, MutableMapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import TypeVar

import numpy as np
import pandas as pd
from PIL import Image

from cxrdemo.data.dataset import load_dataset
from cxrdemo.imaging import lungs
from cxrdemo.imaging.decode import LoadedImage
from cxrdemo.imaging.preprocess import crop_window, model_square
from cxrdemo.inference.explain import explain
from cxrdemo.inference.predict import Prediction, Predictor, decided_class
from cxrdemo.models.registry import LoadedModel, ModelLoadError
from cxrdemo.paths import SAMPLE_DIR

T = TypeVar("T")

MEMO_ENTRIES = 96  # per session: decoded images, predictions, heatmaps (uint8) and reconstructions
THUMBNAIL_SIDE = 96


# --- caching -----------------------------------------------------------------------------------------


def digest(data: bytes) -> str:
    """Content hash of an upload: the cache key, so a renamed copy is not analysed twice."""
    return hashlib.sha256(data).hexdigest()


def registry_fingerprint(cards: dict[str, dict]) -> str:
    """Changes whenever any model is promoted, rolled back or removed (all of them feed a prediction:
    ensemble members, the autoencoder's OOD check, the subtype model)."""
    parts = sorted(
        f"{i}:{c.get('weights_sha256') or c.get('created') or c.get('error') or ''}" for i, c in cards.items()
    )
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def memo(store: MutableMapping, key: Hashable, compute: Callable[[], T], max_entries: int = MEMO_ENTRIES) -> T:
    """`compute()` once per key; least recently used entries beyond `max_entries` are dropped.

    Exceptions are not stored, so a failure is retried on the next rerun.
    """
    if key in store:
        value = store.pop(key)  # re-insert: dicts keep insertion order, so the end is "most recent"
        store[key] = value
        return value
    value = compute()
    store[key] = value
    while len(store) > max_entries:
        store.pop(next(iter(store)))
    return value


# --- explanations ------------------------------------------------------------------------------------


@dataclass
class Heatmap:
    heatmap: np.ndarray  # HxW uint8 (0-255 for 0-1): a quarter of the float32 map's memory
    network: str  # id of the model whose network was explained
    target: str  # class explained
    note: str | None  # why another model's network was explained, for a caption
    lung_share: float | None = None  # share of the heatmap's mass inside the lungs (None: no lungs found)

    def as_float(self) -> np.ndarray:
        return self.heatmap.astype(np.float32) / 255.0


def explained_network(pred: Predictor, model_id: str) -> tuple[LoadedModel, str | None]:
    """The network that stands in for `model_id` in a heatmap, and the model's own note for a caption
    when that is another model's network (`inference.served`: the ensemble and k-NN have none)."""
    model = pred.get(model_id)
    return model.explained_network(), model.heatmap_note()


def heatmap(pred: Predictor, pixels: np.ndarray, model_id: str, *, method: str, target: str) -> Heatmap:
    """Class activation map of `target` (a class name) for `model_id` on a grayscale image."""
    network, note = explained_network(pred, model_id)
    classes = network.classes
    if target not in classes:
        raise ValueError(f"class {target!r} is not one of {network.id}'s classes ({', '.join(classes)})")
    result = explain(
        network.module,
        pixels,
        network.preprocessing,
        method=method,
        target_class=classes.index(target),
        precision=network.precision,
    )
    heat = np.rint(np.clip(result.heatmap, 0.0, 1.0) * 255).astype(np.uint8)
    return Heatmap(heat, network.id, target, note, result.lung_share)


def heatmap_caption(heat: Heatmap, method: str) -> str:
    """What the heatmap shows, and how much of it falls on the lungs."""
    caption = f"{method} heatmap of {heat.target} ({heat.network})"
    if heat.lung_share is not None:
        caption += f" · {heat.lung_share:.0%} of the heatmap lies inside the lungs"
    return caption


# --- lung fields ---------------------------------------------------------------------------------------

OUTLINE_COLOUR = (60, 220, 90)
WINDOW_COLOUR = (250, 200, 40)


@dataclass
class LungView:
    """The lungs as the page shows them: the image with their outline and the crop window, and the crop."""

    outlined: np.ndarray  # HxWx3 uint8
    model_input: np.ndarray  # S x S uint8: the square the explained network saw
    caption: str
    input_caption: str


def lung_view(pred: Predictor, pixels: np.ndarray, model_id: str) -> LungView | None:
    """None when no lung model is installed; else the outline, the crop window and the model's input."""
    import cv2

    if not lungs.installed():
        return None
    network = pred.get(model_id).explained_network()
    spec = network.preprocessing
    fields = lungs.find_lungs(pixels)
    rgb = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_GRAY2RGB)
    thickness = max(2, round(max(pixels.shape) / 250))
    if fields.plausible:
        mask = fields.mask(*pixels.shape).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, OUTLINE_COLOUR, thickness)
        caption = f"Lung outline (green, {fields.area:.0%} of the image)"
        if spec.resize == "lung_crop":
            x0, y0, x1, y1 = crop_window(pixels.shape, fields.box, spec.margin)
            cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), WINDOW_COLOUR, thickness)
            caption += " and the window the model cuts (yellow)"
    else:
        caption = f"No plausible lungs found: {fields.reason}"
    square = model_square(pixels, spec, fields)
    how = "the lung window" if spec.resize == "lung_crop" and fields.plausible else "the whole image"
    input_caption = f"What {network.id} saw: {how}, {spec.input_size} x {spec.input_size} px"
    return LungView(rgb, square, caption, input_caption)


# --- charts and tables -------------------------------------------------------------------------------


def positive_class(prediction: Prediction) -> str | None:
    """The thresholded class of a binary prediction (the second class, as in training), else None."""
    classes = list(prediction.probabilities)
    return classes[1] if prediction.threshold is not None and len(classes) == 2 else None


def output_class(prediction: Prediction) -> str:
    """The class the model's output gives: the prediction, or for a withheld image the class it would have
    been (for the heatmap and the compare table's probability column, never shown as a verdict)."""
    if prediction.prediction is not None:
        return prediction.prediction
    classes = list(prediction.probabilities)
    return decided_class(np.array([prediction.probabilities[c] for c in classes]), classes, prediction.threshold)


def thumbnail_uri(pixels: np.ndarray, side: int = THUMBNAIL_SIDE) -> str:
    """A small PNG of the image as a data: URI (for st.column_config.ImageColumn)."""
    img = Image.fromarray(pixels)
    img.thumbnail((side, side))
    buffer = BytesIO()
    img.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class BatchItem:
    name: str
    image: LoadedImage | None = None
    prediction: Prediction | None = None
    error: str | None = None  # one line, already shown to the user
    digest: str = ""  # of the file's bytes: the key of its memoised results


SINGLE, COMPARE = "Single model", "Compare all"
PREDICTED = "predicted class"  # heatmap target option: whichever class this image was given


@dataclass(frozen=True)
class Settings:
    """What the user chose above the results; every result on the page is drawn from these."""

    model_id: str  # the active model
    mode: str = SINGLE  # SINGLE or COMPARE (adds every installed model's answer)
    method: str = "gradcam"  # CAM method, a key of explain.CAM_METHODS
    target: str = PREDICTED  # the class the heatmap explains, or PREDICTED
    opacity: float = 0.4
    show_reconstruction: bool = False  # the autoencoder's reconstruction and error map
    show_lungs: bool = True  # the lung outline, the crop window and the model's input square


@dataclass
class Installed:
    """What the page answers with: the shared predictor, its cards and their fingerprint (part of every
    memo key, so a promotion invalidates results), and this session's memo store."""

    pred: Predictor
    cards: dict[str, dict]
    store: MutableMapping
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        self.fingerprint = registry_fingerprint(self.cards)


def batch_frame(items: list[BatchItem], *, thumbnails: bool = True) -> pd.DataFrame:
    """One row per file: prediction ("Not assessed" when withheld), withheld, probabilities, threshold,
    warnings, OOD flag, error."""
    rows = []
    for item in items:
        p = item.prediction
        row: dict = {}
        if thumbnails:
            row["image"] = thumbnail_uri(item.image.pixels) if item.image is not None else None
        row.update(
            file=item.name,
            model=p.model if p else None,
            prediction=p.verdict if p else None,
            withheld=p.withheld if p else None,
        )
        for cls, prob in p.probabilities.items() if p else ():
            row[f"P({cls})"] = round(prob, 4)
        row.update(
            threshold=round(p.threshold, 4) if p and p.threshold is not None else None,
            warnings="; ".join(p.warnings) if p else None,
            ood=p.ood if p else None,
            ood_score=p.ood_score if p else None,
            error=item.error,
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    tail = ["threshold", "error", "warnings", "ood", "ood_score", "model"]
    return frame[[c for c in frame.columns if c not in tail] + tail] if rows else frame


def batch_csv(items: list[BatchItem]) -> bytes:
    return batch_frame(items, thumbnails=False).to_csv(index=False, float_format="%.6g").encode("utf-8")


def compare_frame(pred: Predictor, image: LoadedImage) -> pd.DataFrame:
    """Every installed binary model's answer on one image; a model that fails to load gets its error."""
    rows = []
    for model_id in pred.model_ids("binary"):
        try:
            p = pred.predict(image, model_id, with_subtype=False)
        except ModelLoadError as err:
            rows.append({"model": model_id, "prediction": None, "error": str(err)})
            continue
        positive = positive_class(p) or output_class(p)
        rows.append(
            {
                "model": model_id,
                "prediction": p.verdict,
                "class": positive,
                "probability": round(p.probabilities[positive], 4),
                "threshold": round(p.threshold, 4) if p.threshold is not None else None,
                "error": None,
            }
        )
    frame = pd.DataFrame(rows, columns=["model", "prediction", "class", "probability", "threshold", "error"])
    classes = frame["class"].dropna().unique()
    if len(classes) == 1:  # all binary models share their positive class: name the column after it
        frame = frame.drop(columns="class").rename(columns={"probability": f"P({classes[0]})"})
    if frame["error"].isna().all():
        frame = frame.drop(columns="error")
    return frame


# --- examples ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    path: str  # manifest path, relative to the dataset root
    sample: bool = True  # True: the bundled sample; False: the configured data folder (Dataset explorer)

    @property
    def label(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def sample_examples(split: str = "test") -> list[tuple[str, Example]]:
    """(button label, example): the first image of each class in the bundled sample's `split`."""
    frame = load_dataset(SAMPLE_DIR).frame
    if split in set(frame["split"]):
        frame = frame[frame["split"] == split]
    firsts = frame.sort_values("path").groupby("label", sort=True).head(1)
    return [(str(row.label), Example(str(row.path))) for row in firsts.itertuples()]


def read_example(example: Example) -> tuple[str, bytes]:
    """(file name, bytes) of an example; ValueError outside the data folder, OSError when missing."""
    dataset = load_dataset(SAMPLE_DIR if example.sample else None)
    path = dataset.absolute(example.path)
    return path.name, path.read_bytes()


def one_line(text: str) -> str:
    return " ".join(str(text).split())


PREDICTED_COLOUR, OTHER_COLOUR = "#d6336c", "#adb5bd"
PROBABILITY_BARS_CLASS = "cxr-probabilities"
PROBABILITY_BARS_STYLE = f"""<style>
.{PROBABILITY_BARS_CLASS} {{display: grid; grid-template-columns: max-content 1fr 4.2em; gap: 0.45rem 0.6rem;
  align-items: center; font-size: 0.85rem; margin: 0.2rem 0 0.8rem 0;}}
.{PROBABILITY_BARS_CLASS} .track {{position: relative; height: 1.35rem; background: rgba(128, 128, 128, 0.12);
  border-radius: 3px;}}
.{PROBABILITY_BARS_CLASS} .fill {{height: 100%; border-radius: 3px;}}
.{PROBABILITY_BARS_CLASS} .threshold {{position: absolute; top: -0.2rem; bottom: -0.2rem; border-left: 2px dashed;}}
.{PROBABILITY_BARS_CLASS} .value {{text-align: right; font-variant-numeric: tabular-nums;}}
</style>"""


def probability_bars_html(prediction: Prediction) -> str:
    """The calibrated probabilities as horizontal bars in plain HTML; a binary threshold marked on its bar.

    Plain HTML rather than a plotly chart, so the browser draws it with the answer: Streamlit's frontend
    loads its plotly bundle (4.7 MB) on the first chart of a session, which put the first upload's chart
    1.2-1.9 s behind its heatmap on 2 cores (`python -m benchmarks.bench_app`). Each bar carries its class
    and probability (and the threshold marker its value) as data attributes and ARIA meter values. The
    page draws `PROBABILITY_BARS_STYLE` once, before any upload.
    """
    positive = positive_class(prediction)
    rows = []
    for name, p in prediction.probabilities.items():
        label = html.escape(name)
        colour = PREDICTED_COLOUR if name == prediction.prediction else OTHER_COLOUR
        marker = ""
        if name == positive:
            t = prediction.threshold
            marker = (
                f'<div class="threshold" data-threshold="{t:.6f}" style="left: {100 * t:.2f}%" '
                f'title="threshold {t:.2f}"></div>'
            )
        rows.append(
            f'<div class="label">{label}</div>'
            f'<div class="track" data-class="{label}" data-probability="{p:.6f}" role="meter" aria-valuemin="0" '
            f'aria-valuemax="1" aria-valuenow="{p:.4f}" aria-label="P({label})">'
            f'<div class="fill" style="width: {100 * p:.2f}%; background: {colour}"></div>{marker}</div>'
            f'<div class="value">{p:.1%}</div>'
        )
    return f'<div class="{PROBABILITY_BARS_CLASS}">{"".join(rows)}</div>'


_MARKDOWN_SPECIAL = set("\\`*_{}[]()<>#+-.!|~$:")


def markdown_escape(text: str) -> str:
    """A file name shown literally in Markdown (expander labels, headings)."""
    return "".join(f"\\{ch}" if ch in _MARKDOWN_SPECIAL else ch for ch in str(text))


def decision_text(prediction: Prediction) -> str:
    """How the class was decided, in words: the threshold rule for binary models, argmax otherwise."""
    positive = positive_class(prediction)
    if positive is None:
        return f"most probable of {len(prediction.probabilities)} classes ({prediction.model})"
    p = prediction.probabilities[positive]
    side = "at or above" if p >= prediction.threshold else "below"
    return f"P({positive}) = {p:.3f}, {side} the threshold {prediction.threshold:.3f} ({prediction.model})"


def file_facts(image: LoadedImage) -> list[tuple[str, str]]:
    """(label, value) facts about a decoded file; `metadata` is already free of patient identifiers."""
    facts = [("format", image.source_format), ("size", f"{image.original_size[0]} x {image.original_size[1]} px")]
    facts += [(k, v) for k, v in image.metadata.items() if k != "format"]
    return facts


def facts_table(facts: list[tuple[str, str]]) -> str:
    """File facts as a two-column Markdown table, every value shown literally."""
    rows = [f"| {markdown_escape(k)} | {markdown_escape(v)} |" for k, v in facts]
    return "\n".join(["| field | value |", "|---|---|", *rows])


def cam_method_help(network_id: str) -> str:
    """The heatmap-method tooltip: what the saliency benchmark found for each method on this network."""
    from cxrdemo.evaluation.saliency import method_summary
    from cxrdemo.inference.explain import CAM_METHODS

    lines = [
        f"- **{m}**: {method_summary(m, network_id) or 'not measured by the saliency benchmark'}" for m in CAM_METHODS
    ]
    return (
        "Class activation map method (scorecam is slow on a CPU). Higher ROAD means the map is more faithful "
        "to the model; see the Saliency section of the performance page.\n\n" + "\n".join(lines)
    )
