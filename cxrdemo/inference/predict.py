"""Inference over the shipped models: one image in, calibrated probabilities and warnings out.

`Predictor` caches loaded models (thread-safe) and is shared by the command line and the app.
Every classifier's probabilities are temperature-scaled with the temperature from its card, and the
binary decision uses the card's validation-chosen threshold. An image the out-of-distribution check
flags is not given a class at all (`Prediction.withheld`): a confident "PNEUMONIA" on a CT slice or a
photo is worse than no answer. Its probabilities are still computed, for whoever wants to look.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxrdemo.evaluation.calibration import apply_temperature
from cxrdemo.imaging import lungs
from cxrdemo.imaging.decode import LoadedImage
from cxrdemo.imaging.preprocess import PixelImages, resize_square, to_unit
from cxrdemo.inference.explain import Explanation, explain
from cxrdemo.inference.ood import statistics_distance
from cxrdemo.inference.served import serve
from cxrdemo.models.folding import serving_form
from cxrdemo.models.registry import LoadedModel, ModelLoadError, list_cards, load_model
from cxrdemo.paths import weights_dir

DEFAULT_PREFERENCE = ("resnet18-binary", "zubinrnet-binary", "cnn4-binary")
NOT_ASSESSED = "Not assessed"
WARM_UP_SIDE = 320  # the blank image of the warm-up: the dataset's shorter side
OOD_REASON = "this image does not look like the pediatric chest X-rays the models were trained on"


@dataclass
class Prediction:
    file: str
    model: str
    prediction: str | None  # the class; None when withheld
    probabilities: dict[str, float]  # class -> calibrated probability, summing to 1 (also when withheld)
    threshold: float | None  # operating threshold on P(positive class); None for 3 classes
    withheld: bool = False  # True: out of distribution, no class given; the reason is warnings[0]
    warnings: list[str] = field(default_factory=list)
    ood: bool | None = None  # None when no autoencoder is installed
    ood_score: float | None = None
    subtype: dict[str, float] | None = None  # normal/bacteria/virus from the subtype model
    lungs_found: bool | None = None  # None when no lung model is installed
    lung_box: list[float] | None = None  # [x0, y0, x1, y1] in fractions of the image

    @property
    def verdict(self) -> str:
        """The headline a user reads: the class, or "Not assessed"."""
        return NOT_ASSESSED if self.withheld or self.prediction is None else self.prediction

    @property
    def withheld_reason(self) -> str | None:
        return self.warnings[0] if self.withheld and self.warnings else None

    @property
    def other_warnings(self) -> list[str]:
        """The warnings besides the withheld reason (which a page or report shows with the headline)."""
        return self.warnings[1:] if self.withheld else list(self.warnings)

    def to_dict(self) -> dict:
        return asdict(self)


def decided_class(probabilities: np.ndarray, classes: list[str], threshold: float | None) -> str:
    """The class the model's output decides: the threshold on P(second class) for a binary model, else
    the most probable class."""
    if threshold is not None and len(classes) == 2:
        return classes[1] if probabilities[1] >= threshold else classes[0]
    return classes[int(np.argmax(probabilities))]


def _cards_stamp(directory: Path) -> tuple:
    """(name, mtime, size) of every card file: changes whenever a card is written, added or removed."""
    stamp = []
    for path in sorted(directory.glob("*.json")):
        try:
            info = path.stat()
        except OSError:  # removed between glob and stat: the next call sees the new state
            continue
        stamp.append((path.name, info.st_mtime_ns, info.st_size))
    return tuple(stamp)


class Predictor:
    """Loads models lazily from a weights folder and answers predictions for loaded images."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or weights_dir()
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.errors: dict[str, str] = {}
        # (stamp of the card files, cards): parsing every card costs ~2 ms, and one answer asks several times
        self._cards: tuple[tuple, dict[str, dict]] | None = None
        self._warm = threading.Event()

    # --- the registry -----------------------------------------------------------------------------
    def cards(self) -> dict[str, dict]:
        """Every card in the weights folder, re-read only when a card file changed (read-only: shared)."""
        stamp = _cards_stamp(self.directory)
        with self._lock:
            if self._cards is not None and self._cards[0] == stamp:
                return self._cards[1]
        cards = list_cards(self.directory)
        with self._lock:
            self._cards = (stamp, cards)
        return cards

    def model_ids(self, task: str | None = "binary") -> list[str]:
        """Usable classifier ids (k-NN and ensemble included) for `task`, ensemble last."""
        ids = [
            i
            for i, c in self.cards().items()
            if "error" not in c and c.get("kind") in ("classifier", "knn") and (task is None or c.get("task") == task)
        ]
        if (task in (None, "binary")) and "ensemble" in self.cards():
            ids.append("ensemble")
        return ids

    def default_model_id(self) -> str:
        ids = self.model_ids("binary")
        for preferred in DEFAULT_PREFERENCE:
            if preferred in ids:
                return preferred
        if not ids:
            raise ModelLoadError(f"no binary classifier installed in {self.directory}")
        return ids[0]

    def warm_up(self) -> None:
        """Load what the first answer uses and answer one blank image; errors are kept, not raised.

        That is the default model, the autoencoder and the subtype model, and one prediction and one
        heatmap: a network's first inference forward and first forward + backward each pay one-off costs
        (0.1-0.2 s on 2 cores), which the first upload should not. pytorch-grad-cam (and matplotlib with
        it, 3.6 s on 2 cores) is not imported: the default heatmap takes explain's one-pass fast path,
        which needs neither. Only another CAM method pays for it, on first use.
        """
        side = WARM_UP_SIDE
        blank = LoadedImage(np.full((side, side), 128, np.uint8), "warm-up", "PNG", (side, side))
        try:
            default_id = self.default_model_id()
            # both paths a page takes: the batched inference forward and the heatmap's forward + backward
            self.predict(blank, default_id, with_subtype=False)
            self.predict_and_explain(blank, default_id, with_subtype=False)
            subtype_id = self.subtype_model_id()
            if subtype_id:
                self.probabilities(blank.pixels, subtype_id)
        except (ModelLoadError, OSError, ValueError) as err:
            self.errors.setdefault("warm-up", str(err))
        finally:
            self._warm.set()

    def wait_until_warm(self, timeout: float | None = None) -> bool:
        """Block until a `warm_up` (on another thread) has finished; False on timeout."""
        return self._warm.wait(timeout)

    def subtype_model_id(self) -> str | None:
        """The installed subtype model with the best validation macro AUROC (test is never consulted)."""
        cards = self.cards()

        def validation_auroc(model_id: str) -> float:
            value = cards[model_id].get("metrics", {}).get("val", {}).get("macro_roc_auc", {}).get("value")
            return -1.0 if value is None else float(value)

        return max(self.model_ids("subtype"), key=validation_auroc, default=None)

    def get(self, model_id: str) -> LoadedModel:
        """A loaded model, cached; reloaded when its card changed on disk (promotion, rollback)."""
        card_path = self.directory / f"{model_id}.json"
        stamp = card_path.stat().st_mtime_ns if card_path.exists() else None
        with self._lock:
            cached = self._models.get(model_id)
            if cached is not None and cached.card.get("_stamp") == stamp:
                return cached
            loading = self._loading.setdefault(model_id, threading.Lock())
        # one load per model at a time (a second caller waits for the first, e.g. behind the warm-up);
        # different models load in parallel
        with loading:
            with self._lock:
                cached = self._models.get(model_id)
                if cached is not None and cached.card.get("_stamp") == stamp:
                    return cached
            # never as inference tensors: callers inside torch.inference_mode() would otherwise make the
            # weights unusable for Grad-CAM's backward pass
            with torch.inference_mode(False):
                loaded = load_model(model_id, self.directory)
                if loaded.module is not None:
                    serving_form(loaded.module)
                model = serve(loaded, self.get)
            model.card["_stamp"] = stamp
            with self._lock:
                self._models[model_id] = model
        return model

    # --- predictions ------------------------------------------------------------------------------
    @torch.inference_mode()
    def probabilities(
        self, pixels: np.ndarray, model_id: str, images: PixelImages | None = None
    ) -> tuple[np.ndarray, LoadedModel]:
        """Calibrated class probabilities (C,) of one grayscale image: a batch of one.

        `images` is that image as `PixelImages` when the caller has it (its lungs are found once).
        """
        model = self.get(model_id)
        return model.probabilities(images or PixelImages([pixels]))[0], model

    def predict(self, image: LoadedImage, model_id: str | None = None, *, with_subtype: bool = True) -> Prediction:
        model_id = model_id or self.default_model_id()
        images = PixelImages([image.pixels])
        probs, model = self.probabilities(image.pixels, model_id, images)
        return self._finish(image, model_id, model, probs, with_subtype, images)

    @staticmethod
    def lung_fields(images: PixelImages) -> lungs.LungFields | None:
        """The lungs of a one-image batch; None when no lung model is installed."""
        return images.lung_fields[0] if lungs.installed() else None

    def explain_network(self, model_id: str) -> tuple[str, LoadedModel]:
        """The single network Grad-CAM can explain for `model_id` (ensemble: first member; k-NN: backbone)."""
        network = self.get(model_id).explained_network()
        return network.id, network

    def predict_and_explain(
        self,
        image: LoadedImage,
        model_id: str | None = None,
        *,
        method: str = "gradcam",
        target_class: int | None = None,
        opacity: float = 0.4,
        with_subtype: bool = True,
    ) -> tuple[Prediction, Explanation, str]:
        """Prediction plus heatmap; for a plain classifier both come from one forward pass.

        Returns (prediction, explanation, id of the explained network).
        """
        model_id = model_id or self.default_model_id()
        network_id, network = self.explain_network(model_id)
        images = PixelImages([image.pixels])
        explanation = explain(
            network.module,
            image.pixels,
            network.preprocessing,
            method=method,
            target_class=target_class,
            opacity=opacity,
            precision=network.precision,
            fields=self.lung_fields(images),
        )
        if network_id == model_id:
            probs = apply_temperature(explanation.logits[None], network.temperature)[0]
            prediction = self._finish(image, model_id, network, probs, with_subtype, images)
        else:
            probs, model = self.probabilities(image.pixels, model_id, images)
            prediction = self._finish(image, model_id, model, probs, with_subtype, images)
        return prediction, explanation, network_id

    def _finish(
        self,
        image: LoadedImage,
        model_id: str,
        model: LoadedModel,
        probs: np.ndarray,
        with_subtype: bool,
        images: PixelImages,
    ) -> Prediction:
        classes = model.classes
        threshold = model.threshold if len(classes) == 2 else None
        label = decided_class(probs, classes, threshold)
        fields = self.lung_fields(images)
        flagged, ood_score, reason = self.out_of_distribution(image.pixels, fields)
        # the one place that decides whether an answer is withheld; everything else reads the field
        withheld = flagged is True
        result = Prediction(
            image.name,
            model_id,
            None if withheld else label,
            {c: float(p) for c, p in zip(classes, probs)},
            threshold,
            withheld=withheld,
            warnings=([reason] if withheld else []) + list(image.warnings),
            ood=flagged,
            ood_score=ood_score,
            lungs_found=None if fields is None else fields.plausible,
            lung_box=fields.box.to_list() if fields is not None and fields.plausible else None,
        )
        if with_subtype and label == "PNEUMONIA":  # computed when withheld too, shown only as model output
            subtype_id = self.subtype_model_id()
            if subtype_id:
                sub, sub_model = self.probabilities(image.pixels, subtype_id, images)
                result.subtype = {c: float(p) for c, p in zip(sub_model.classes, sub)}
        return result

    def compare_all(self, image: LoadedImage) -> list[Prediction]:
        """Every binary model's answer (the ensemble last)."""
        return [self.predict(image, m, with_subtype=False) for m in self.model_ids("binary")]

    # --- out-of-distribution check ----------------------------------------------------------------
    def autoencoder(self) -> LoadedModel | None:
        if "autoencoder" not in self.cards():
            return None
        try:
            return self.get("autoencoder")
        except ModelLoadError as err:
            self.errors["autoencoder"] = str(err)
            return None

    @torch.inference_mode()
    def out_of_distribution(
        self, pixels: np.ndarray, fields: lungs.LungFields | None = None
    ) -> tuple[bool | None, float | None, str | None]:
        """(flagged, autoencoder score, reason): reconstruction error, image statistics or lungs out of range.

        Three signals: the autoencoder's reconstruction error, the image statistics, and (when a lung
        model is installed: `fields`, found here when not given) whether plausible lungs were found.
        The reason is one sentence for a clinician, with each signal that fired against its threshold.
        """
        ae = self.autoencoder()
        if ae is None:
            return None, None, None
        square = resize_square(pixels, ae.preprocessing.input_size)
        x = to_unit(square, ae.preprocessing.input_size)
        score = float(((ae.module(x) - x) ** 2).mean())
        reasons = []
        if score > ae.threshold:
            reasons.append(f"autoencoder reconstruction error {score:.4f} > threshold {ae.threshold:.4f}")
        statistics = ae.card.get("image_statistics")
        if statistics:
            # both signals look at the same 96 px square: resize once (resize_square passes a square through)
            same_size = statistics["size"] == square.shape[0]
            distance = statistics_distance(square if same_size else pixels, statistics)
            if distance > statistics["threshold"]:
                reasons.append(f"image statistics {distance:.1f} > threshold {statistics['threshold']:.1f}")
        if fields is None and lungs.installed():
            fields = lungs.find_lungs(pixels)
        if fields is not None and not fields.plausible:
            reasons.append(f"no plausible lungs found: {fields.reason}")
        if not reasons:
            return False, score, None
        return True, score, f"{NOT_ASSESSED}: {OOD_REASON} ({'; '.join(reasons)})."

    @torch.inference_mode()
    def reconstruction(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(reconstruction, error map) as uint8 images at the autoencoder's input size."""
        ae = self.autoencoder()
        if ae is None:
            return None
        x = to_unit(pixels, ae.preprocessing.input_size)
        recon = ae.module(x)
        error = (recon - x).abs()[0, 0]
        error = error / max(float(error.max()), 1e-6)
        return (recon[0, 0].numpy() * 255).astype(np.uint8), (error.numpy() * 255).astype(np.uint8)
