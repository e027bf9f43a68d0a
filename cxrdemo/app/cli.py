"""Command line: `python -m cxrdemo {train,evaluate,predict,models,promote,rollback,...}`.

Errors a user can cause end in a one-line message and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxrdemo.training.command import add_train_arguments, train_config

EXIT_BAD_INPUT = 2


def _add_train(sub) -> None:
    add_train_arguments(sub.add_parser("train", help="train one architecture (torchrun-compatible), or resume a run"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxrdemo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    p = sub.add_parser("evaluate", help="re-evaluate an installed model on a split")
    p.add_argument("--model", required=True)
    p.add_argument("--split", default="test", choices=["test", "val", "official_val"])
    p.add_argument("--data")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("predict", help="classify image files (JPEG, PNG, DICOM, ...)")
    p.add_argument("files", nargs="+")
    p.add_argument("--model", help="model id or 'ensemble' (default: the default binary model)")
    p.add_argument("--cam", help="also write a Grad-CAM overlay with this method (gradcam, gradcam++, ...)")
    p.add_argument("--cam-out", default="cams")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("models", help="list installed models with headline metrics")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("promote", help="install a finished run's model into weights/")
    p.add_argument("run_dir")
    p.add_argument("--as", dest="model_id")
    p = sub.add_parser("rollback", help="restore the version a promotion replaced")
    p.add_argument("model_id")
    p = sub.add_parser("build-knn", help="fit k-NN on a backbone's embeddings")
    p.add_argument("--backbone", required=True)
    p.add_argument("--data")
    p.add_argument("--id", default="knn-binary")
    p = sub.add_parser("build-ensemble", help="choose ensemble members on validation")
    p.add_argument("--members", nargs="*")
    p = sub.add_parser("fit-ood", help="(re)fit the image-statistics out-of-distribution check of the autoencoder")
    p.add_argument("--data")
    p = sub.add_parser("make-sample", help="(re)build data/sample from a full dataset")
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="data/sample")
    p = sub.add_parser("make-compact", help="224 px grayscale JPEG copy of a dataset (for GPU machines)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from cxrdemo.runlog import RunLog
    from cxrdemo.training import train

    try:
        cfg, resume = train_config(args)
    except ValueError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    log = RunLog(Path(cfg.out), active=int(os.environ.get("RANK", "0")) == 0)
    try:
        result = train(cfg, resume=resume)
        if log.active:
            if cfg.arch == "autoencoder":
                from cxrdemo.training.anomaly import finalize_autoencoder

                card = finalize_autoencoder(result, model_id=args.id or "autoencoder")
            else:
                from cxrdemo.training.finalize import finalize

                card = finalize(result, model_id=args.id)
            log.record(event="end", model_id=card["id"], seconds=result.seconds)
            log.status("finished", model_id=card["id"], best_epoch=result.best_epoch)
            print(
                json.dumps(
                    {
                        "run": cfg.out,
                        "model": card["id"],
                        "best_epoch": result.best_epoch,
                        "val": _headline(card.get("metrics", {}).get("val", {})),
                    }
                )
            )
    except (ValueError, RuntimeError, OSError) as err:
        message = _one_line(err)
        try:
            log.status("failed", error=message)
        except OSError:
            pass  # the run folder itself is unwritable: the exit code and stderr still say so
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


def _one_line(err: BaseException) -> str:
    """A user-facing line for an exception: OS errors name the file and the reason, not an errno dump."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _headline(metrics: dict) -> dict:
    out = {}
    for key in ("accuracy", "roc_auc", "sensitivity", "specificity", "macro_roc_auc", "flagged"):
        value = metrics.get(key)
        if isinstance(value, dict):
            value = value.get("value")
        if value is not None:
            out[key] = round(value, 4)
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxrdemo.evaluation.evaluate import evaluate_model

    result = evaluate_model(args.model, args.split, args.data)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['model']} on {result['dataset']}/{result['split']} (n={result['n']})")
        for key, value in result["metrics"].items():
            if isinstance(value, dict) and "value" in value:
                ci = value.get("ci")
                interval = f"  [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and None not in ci else ""
                print(f"  {key:<16}{value['value']:.4f}{interval}" if value["value"] is not None else f"  {key:<16}n/a")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cxrdemo.imaging.decode import ImageLoadError, load_image_file
    from cxrdemo.inference.predict import Prediction, Predictor

    predictor = Predictor()
    model_id = args.model or predictor.default_model_id()
    predictor.get(model_id)  # fail early, once, if the model is unusable
    failed = False
    for name in args.files:
        prediction: Prediction | None = None
        try:
            image = load_image_file(name)
            prediction = predictor.predict(image, model_id)
            result = prediction.to_dict()
            result["file"] = name
            if args.cam:
                cam_path, lung_share = _write_cam(predictor, image, model_id, args.cam, Path(args.cam_out))
                result["cam"], result["cam_lung_share"] = str(cam_path), lung_share
        except ImageLoadError as err:
            failed = True
            result = {"file": name, "error": str(err)}
        except Exception as err:  # noqa: BLE001 - one file must never stop the batch or print a traceback
            failed = True
            result = {"file": name, "error": f"{Path(name).name} could not be analysed: {_one_line(err)}"}
        if args.json:
            print(json.dumps(result), flush=True)
        elif "error" in result or prediction is None:
            print(f"{name}: error: {result['error']}", flush=True)
        else:
            probs = ", ".join(f"{c} {p:.3f}" for c, p in prediction.probabilities.items())
            if prediction.withheld:  # the reason is the first warning, printed just below
                probs = f"model output, not a diagnosis: {probs}"
            warn = "".join(f"\n  warning: {w}" for w in prediction.warnings)
            print(f"{name}: {prediction.verdict} ({probs}){warn}", flush=True)
    # a withheld answer (not a chest X-ray like the training data) is an answer, not an error: exit 0
    return EXIT_BAD_INPUT if failed else 0


def _write_cam(predictor, image, model_id: str, method: str, out_dir: Path) -> tuple[Path, float | None]:
    """Overlay PNG and the heatmap's share inside the lungs; the ensemble and k-NN have no network of their
    own, so their first member or backbone is explained and named in the file name."""
    from PIL import Image

    from cxrdemo.inference.explain import explain

    network_id, network = predictor.explain_network(model_id)
    explanation = explain(
        network.module, image.pixels, network.preprocessing, method=method, precision=network.precision
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{Path(image.name).stem}.{network_id}.{method}.png"
    Image.fromarray(explanation.overlay).save(path)
    return path, None if explanation.lung_share is None else round(explanation.lung_share, 4)


def cmd_models(args: argparse.Namespace) -> int:
    from cxrdemo.models.registry import list_cards

    cards = list_cards()
    rows = []
    for model_id, card in cards.items():
        test = card.get("metrics", {}).get("test", {})
        rows.append(
            {
                "id": model_id,
                "kind": card.get("kind"),
                "arch": card.get("arch"),
                "task": card.get("task"),
                "recipe": recipe(card),
                "test": _headline(test),
                "error": card.get("error"),
            }
        )
    segmenter = _lung_model_row()
    if args.json:
        print(json.dumps(rows + ([segmenter] if segmenter else [])))
        return 0
    width = max([len("recipe"), *(len(row["recipe"]) for row in rows)]) + 2
    print(f"{'id':<20}{'kind':<13}{'task':<9}{'recipe':<{width}}test metrics")
    for row in rows:
        metrics = row["error"] or "  ".join(f"{k}={v}" for k, v in row["test"].items())
        print(f"{row['id']:<20}{row['kind'] or '?':<13}{row['task'] or '?':<9}{row['recipe']:<{width}}{metrics}")
    if segmenter:
        print(
            f"\n{segmenter['id']} (lung fields, {segmenter['arch']}): validation Dice "
            f"{segmenter['dice_full_resolution']} full-resolution / {segmenter['dice_224_copies']} 224x224 copies, "
            f"{segmenter['cpu_ms_per_image']} ms per image on the CPU\n  data: {segmenter['data_source']}"
            f"\n  licence: {segmenter['licence']}"
        )
    return 0


def _lung_model_row() -> dict | None:
    """The lung segmenter's card in brief (it lives in weights/lungs/, apart from the classifiers)."""
    from cxrdemo.fileio import read_json
    from cxrdemo.imaging import lungs

    path = lungs.weights_path().with_suffix(".json")
    if not path.exists():
        return None
    card = read_json(path)
    metrics = card.get("metrics", {})
    return {
        "id": card.get("id", lungs.MODEL_ID),
        "kind": "segmenter",
        "arch": card.get("arch"),
        "task": card.get("task"),
        "dice_full_resolution": metrics.get("val_dice_full_resolution", {}).get("mean"),
        "dice_224_copies": metrics.get("val_dice_224_copies", {}).get("mean"),
        "cpu_ms_per_image": card.get("cpu_ms_per_image"),
        "data_source": card.get("data_source"),
        "licence": card.get("licence"),
    }


def recipe(card: dict) -> str:
    """Input, training precision, epochs and wall time, e.g. '224 px lung crop bf16 20 ep 87 min'.

    A seed average shows its copies ('3 x 20 ep'); a model the replacement gate kept says what it beat.
    """
    training = card.get("training") or {}
    if card.get("kind") == "ensemble":
        return f"mean of {len(card.get('members', []))} models"
    if card.get("kind") == "knn":
        return f"k={card.get('k')} on {card.get('backbone')}"
    preprocessing = card.get("preprocessing") or {}
    size, resize = preprocessing.get("input_size"), preprocessing.get("resize", "squash")
    input_form = f"{size} px {resize.replace('_', ' ')}" if size else ""
    parts = [input_form, training.get("precision_used", ""), ""]
    if training.get("epochs_run") is not None:
        copies = int(training.get("seeds", 1))
        parts[2] = f"{copies} x {training['epochs_run']} ep" if copies > 1 else f"{training['epochs_run']} ep"
    if training.get("seconds") is not None:
        parts.append(f"{training['seconds'] / 60:.0f} min")
    if (card.get("replacement_gate") or {}).get("decision") == "keep shipped":
        parts.append("(kept: lung crop failed gate 4)")
    return " ".join(p for p in parts if p)


def cmd_promote(args: argparse.Namespace) -> int:
    from cxrdemo.models.registry import promote

    card = promote(Path(args.run_dir), args.model_id)
    print(f"promoted {args.run_dir} as {card['id']}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from cxrdemo.models.registry import rollback

    card = rollback(args.model_id)
    print(f"rolled back {card['id']} (created {card.get('created', '?')})")
    return 0


def cmd_build_knn(args: argparse.Namespace) -> int:
    from cxrdemo.paths import weights_dir
    from cxrdemo.training.knn_build import build_knn

    card = build_knn(args.backbone, data=args.data, out=weights_dir(), model_id=args.id)
    print(json.dumps({"model": card["id"], "k": card["k"], "test": _headline(card["metrics"]["test"])}))
    return 0


def cmd_build_ensemble(args: argparse.Namespace) -> int:
    from cxrdemo.paths import weights_dir
    from cxrdemo.training.ensemble import build_ensemble

    card = build_ensemble(weights_dir(), args.members or None, fixed=bool(args.members))
    print(json.dumps({"members": card["members"], "test": _headline(card["metrics"].get("test", {}))}))
    return 0


def cmd_fit_ood(args: argparse.Namespace) -> int:
    from cxrdemo.data.dataset import load_dataset
    from cxrdemo.fileio import atomic_write_json
    from cxrdemo.models.registry import load_card
    from cxrdemo.paths import weights_dir
    from cxrdemo.training.anomaly import fit_image_statistics

    card = load_card("autoencoder")
    training = card.get("training", {})
    card["image_statistics"] = fit_image_statistics(
        load_dataset(args.data), training.get("val_fraction", 0.15), training.get("seed", 0)
    )
    atomic_write_json(weights_dir() / "autoencoder.json", card)
    print(f"image-statistics threshold {card['image_statistics']['threshold']:.1f}")
    return 0


def cmd_make_sample(args: argparse.Namespace) -> int:
    from cxrdemo.data.sample import make_sample

    print(f"wrote {len(make_sample(Path(args.data), Path(args.out)))} images to {args.out}")
    return 0


def cmd_make_compact(args: argparse.Namespace) -> int:
    from cxrdemo.data.sample import make_compact

    print(f"wrote {len(make_compact(Path(args.data), Path(args.out)))} images to {args.out}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "models": cmd_models,
    "promote": cmd_promote,
    "rollback": cmd_rollback,
    "build-knn": cmd_build_knn,
    "build-ensemble": cmd_build_ensemble,
    "fit-ood": cmd_fit_ood,
    "make-sample": cmd_make_sample,
    "make-compact": cmd_make_compact,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cxrdemo.models.registry import ModelLoadError

    try:
        return COMMANDS[args.command](args)
    except (ModelLoadError, ValueError, OSError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence: a message, never a traceback
        print(f"error: internal error ({type(err).__name__}): {_one_line(err)}", file=sys.stderr)
        return 1
