"""Dataset statistics for the explorer page: filters, counts, patients, duplicates, sizes, thumbnails.

Pure functions over a manifest frame (`Dataset.frame`, columns as in `cxrdemo.data.dataset`). Nothing here
touches a path that did not come from the manifest, and every file is reached through
`Dataset.absolute`, which refuses paths outside the data folder.

    from cxrdemo.data.dataset import load_dataset
    from cxrdemo.evaluation import explore
    ds = load_dataset()
    explore.class_counts(ds.frame)
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps

from cxrdemo.data.dataset import Dataset
from cxrdemo.imaging.decode import load_image_file
from cxrdemo.models.registry import sha256_file

RESOLUTIONS = ("all", "full", "low")  # every image / full-resolution source / the 224 px low-resolution copy
RESOLUTION_LABELS = {
    "all": "All images",
    "full": "Full-resolution source",
    "low": "224 px low-resolution copy",
}
PAGE_SIZE = 24
THUMBNAIL_PX = 160
DETAIL_PX = 640
# manifest columns shown for one image, in this order (whichever the manifest has)
RECORD_COLUMNS = (
    "path",
    "split",
    "label",
    "subtype",
    "patient_id",
    "width",
    "height",
    "source_width",
    "source_height",
    "low_resolution_source",
    "source",
    "sha256",
)


def _is_low_res(frame: pd.DataFrame) -> pd.Series:
    if "low_resolution_source" not in frame:
        return pd.Series(False, index=frame.index)
    return frame["low_resolution_source"].fillna(0).astype(int) == 1


def _ordered(values: pd.Series, preferred: tuple[str, ...] = ()) -> list[str]:
    """Distinct values: those in `preferred` first (in that order), then the rest sorted."""
    present = set(values.dropna().astype(str))
    return [v for v in preferred if v in present] + sorted(present - set(preferred))


def options(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Filter choices present in the manifest: splits (train, test, val first), labels, subtypes."""
    return {
        "splits": _ordered(frame["split"], ("train", "test", "val")),
        "labels": _ordered(frame["label"]),
        "subtypes": _ordered(frame["subtype"], ("normal", "bacteria", "virus")),
        "resolutions": list(RESOLUTIONS),
    }


def filter_frame(
    frame: pd.DataFrame, splits=None, labels=None, subtypes=None, resolution: str = "all", patient: str | None = None
) -> pd.DataFrame:
    """Rows matching every given filter; `None` (or empty) means no filter on that column.

    `resolution` is one of RESOLUTIONS; `patient` matches patient ids as a case-insensitive substring
    (plain text, never a pattern).
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution {resolution!r}; choose one of {', '.join(RESOLUTIONS)}")
    keep = pd.Series(True, index=frame.index)
    for column, chosen in (("split", splits), ("label", labels), ("subtype", subtypes)):
        if chosen:
            keep &= frame[column].isin(list(chosen))
    if resolution != "all":
        low = _is_low_res(frame)
        keep &= low if resolution == "low" else ~low
    if patient and patient.strip():
        needle = patient.strip().lower()
        keep &= frame["patient_id"].astype(str).str.lower().str.contains(needle, regex=False)
    return frame[keep].reset_index(drop=True)


def page_of(frame: pd.DataFrame, page: int, per_page: int = PAGE_SIZE) -> tuple[pd.DataFrame, int]:
    """(rows of 1-based `page`, number of pages); a page past the end gives the last page."""
    if per_page < 1:
        raise ValueError("per_page must be at least 1")
    pages = max(1, -(-len(frame) // per_page))
    page = min(max(1, int(page)), pages)
    return frame.iloc[(page - 1) * per_page : page * per_page].reset_index(drop=True), pages


def class_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Images per split and label: columns split, label, images (long format, for grouped bars)."""
    counts = frame.groupby(["split", "label"]).size().rename("images").reset_index()
    return _sort_splits(counts, frame)


def subtype_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Images per split and subtype: columns split, subtype, images."""
    counts = frame.groupby(["split", "subtype"]).size().rename("images").reset_index()
    order = {s: i for i, s in enumerate(options(frame)["subtypes"])}  # normal, bacteria, virus
    counts = counts.sort_values("subtype", key=lambda s: s.map(order), kind="stable")
    return _sort_splits(counts, frame)


def _sort_splits(table: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    order = {s: i for i, s in enumerate(options(frame)["splits"])}
    return table.sort_values(["split"], key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def patients_per_split(frame: pd.DataFrame) -> pd.DataFrame:
    """Distinct patients and images per split: columns split, patients, images."""
    table = frame.groupby("split").agg(patients=("patient_id", "nunique"), images=("path", "size")).reset_index()
    return _sort_splits(table, frame)


def shared_patients(frame: pd.DataFrame, a: str = "train", b: str = "test") -> pd.DataFrame:
    """Patients with images in both split `a` and split `b`: patient_id, images_<a>, images_<b>."""
    per = frame[frame["split"].isin([a, b])].groupby(["patient_id", "split"]).size().unstack(fill_value=0)
    for split in (a, b):
        if split not in per:
            per[split] = 0
    both = per[(per[a] > 0) & (per[b] > 0)]
    out = pd.DataFrame(
        {"patient_id": both.index.astype(str), f"images_{a}": both[a].to_numpy(), f"images_{b}": both[b].to_numpy()}
    )
    return out.sort_values("patient_id").reset_index(drop=True)


def with_sha256(frame: pd.DataFrame, dataset: Dataset | None = None) -> pd.DataFrame:
    """`frame` with every `sha256` filled in, hashing (through `dataset`) only the files that lack one."""
    hashes = frame["sha256"] if "sha256" in frame else pd.Series(None, index=frame.index, dtype=object)
    missing = hashes.isna()
    if not missing.any():
        return frame
    if dataset is None:
        raise ValueError("the manifest has no sha256 for some files; pass the Dataset to hash them")
    hashes = hashes.astype(object).copy()
    hashes[missing] = [sha256_file(dataset.absolute(p)) for p in frame.loc[missing, "path"]]
    return frame.assign(sha256=hashes)


def duplicate_groups(frame: pd.DataFrame, dataset: Dataset | None = None) -> pd.DataFrame:
    """Files that are byte-identical to another file: group, sha256, path, split, label, patient_id.

    Uses the manifest's `sha256` column; files without one are hashed lazily (needs `dataset`).
    Groups are numbered from 1 in order of their first path.
    """
    frame = with_sha256(frame, dataset)
    dup = frame[frame.duplicated("sha256", keep=False)]
    columns = ["group", "sha256", "path", "split", "label", "patient_id"]
    if dup.empty:
        return pd.DataFrame(columns=columns)
    dup = dup.sort_values(["sha256", "path"])
    first_path = dup.groupby("sha256")["path"].transform("min")
    dup = dup.assign(_first=first_path).sort_values(["_first", "path"])
    dup["group"] = pd.factorize(dup["_first"])[0] + 1
    return dup[columns].reset_index(drop=True)


def duplicates_of(frame: pd.DataFrame, path: str) -> list[str]:
    """Other manifest paths with the same sha256 as `path` (empty without a sha256 column)."""
    if "sha256" not in frame:
        return []
    row = frame[frame["path"] == path]
    if row.empty or pd.isna(row["sha256"].iloc[0]):
        return []
    same = frame[(frame["sha256"] == row["sha256"].iloc[0]) & (frame["path"] != path)]
    return sorted(same["path"])


def size_table(frame: pd.DataFrame, dataset: Dataset | None = None) -> pd.DataFrame:
    """Per-image sizes: path, split, width, height, source_width, source_height, resolution.

    Sizes come from the manifest; without them the file headers are read through `dataset`. The source
    size falls back to the file size; `resolution` names the source ("full" or "low", see RESOLUTIONS).
    """
    out = frame[["path", "split"]].copy()
    if "width" in frame and "height" in frame and frame[["width", "height"]].notna().all().all():
        out["width"], out["height"] = frame["width"].astype(int), frame["height"].astype(int)
    else:
        if dataset is None:
            raise ValueError("the manifest has no image sizes; pass the Dataset to read them from the files")
        sizes = [_image_size(dataset.absolute(p)) for p in frame["path"]]
        out["width"] = [w for w, _ in sizes]
        out["height"] = [h for _, h in sizes]
    for side in ("width", "height"):
        source = frame.get(f"source_{side}")
        out[f"source_{side}"] = out[side] if source is None else source.fillna(out[side]).astype(int)
    out["resolution"] = _is_low_res(frame).map({True: "low", False: "full"}).to_numpy()
    return out


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:  # reads the header only
        return img.size


def record(dataset: Dataset, path: str) -> dict:
    """One manifest row as a dict (columns in RECORD_COLUMNS order) plus `duplicates` (other paths)."""
    rows = dataset.frame[dataset.frame["path"] == path]
    if rows.empty:
        raise KeyError(f"{path!r} is not in the manifest of {dataset.root}")
    row = rows.iloc[0]
    info = {c: _plain(row[c]) for c in RECORD_COLUMNS if c in row.index}
    info["duplicates"] = duplicates_of(dataset.frame, path)
    return info


def record_rows(info: dict) -> pd.DataFrame:
    """`record(...)` as a two-column table of strings (field, value) for display."""

    def size(w: str, h: str) -> str | None:
        return f"{info[w]} × {info[h]} px" if info.get(w) is not None and info.get(h) is not None else None

    low = info.get("low_resolution_source")
    values = {
        "path": info.get("path"),
        "split": info.get("split"),
        "label": info.get("label"),
        "subtype": info.get("subtype"),
        "patient": info.get("patient_id"),
        "size": size("width", "height"),
        "source size": size("source_width", "source_height"),
        "low-res copy": None if low is None else ("yes (224 px, aspect lost)" if low == 1 else "no"),
        "source": info.get("source"),
        "sha256": info.get("sha256"),
        "duplicates": ", ".join(info.get("duplicates") or []) or "none",
    }
    return pd.DataFrame([{"field": k, "value": "–" if v is None else str(v)} for k, v in values.items()])


def _plain(value):
    """numpy scalars as Python values, missing as None (for display and JSON)."""
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def overview(frame: pd.DataFrame, dataset: Dataset | None = None) -> dict:
    """Every statistic the explorer shows for `frame`, as DataFrames plus a few totals."""
    shared = shared_patients(frame)
    duplicates = duplicate_groups(frame, dataset)
    return {
        "images": int(len(frame)),
        "patients": int(frame["patient_id"].nunique()),
        "class_counts": class_counts(frame),
        "subtype_counts": subtype_counts(frame),
        "patients_per_split": patients_per_split(frame),
        "shared_patients": shared,
        "duplicates": duplicates,
        "duplicate_groups": int(duplicates["group"].nunique()) if len(duplicates) else 0,
        "sizes": size_table(frame, dataset),
        "low_resolution": int(_is_low_res(frame).sum()),
    }


def thumbnail(path: str | Path, size: int = THUMBNAIL_PX, *, square: bool = False) -> bytes:
    """A JPEG of the image at `path` (decoded like an upload, so grayscale) at most `size` px a side.

    `square` letterboxes it onto a black `size` x `size` canvas, so a grid of thumbnails lines up.
    """
    if size < 8:
        raise ValueError("size must be at least 8 pixels")
    img = Image.fromarray(load_image_file(path).pixels)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)  # never enlarges
    if square:
        img = ImageOps.pad(img, (size, size), color=0)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def dataset_thumbnail(dataset: Dataset, path: str, size: int = THUMBNAIL_PX, *, square: bool = False) -> bytes:
    """`thumbnail` of a manifest path, resolved (and checked) through `Dataset.absolute`."""
    if not (dataset.frame["path"] == path).any():
        raise KeyError(f"{path!r} is not in the manifest of {dataset.root}")
    return thumbnail(dataset.absolute(path), size, square=square)
