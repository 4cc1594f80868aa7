"""Adapter for Amazon Reviews 2023 (McAuley lab) JSONL: a review file and, optionally, its item metadata file.

Parsed line by line (streamed, .jsonl.gz too) so that a broken line is reported with its number, and only the
few fields the pipeline uses are kept in memory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

from molar_core.data.raw import RawDataset, iter_jsonl
from molar_core.errors import DataError

TEXT_FIELDS = ["category", "store", "features", "description"]
_IMAGE_SIZES = ["large", "hi_res", "thumb"]  # preferred URL key of an image, best first


def load_amazon2023(reviews: str | Path, meta: str | Path | None = None) -> RawDataset:
    """Read review lines (user_id, parent_asin or asin, rating, timestamp in ms) and, with `meta`, item metadata."""
    reviews_file = str(reviews)
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    ratings: list[float] = []
    rows: list[int] = []
    for line, obj in iter_jsonl(reviews_file):
        users.append(_id(obj, "user_id", reviews_file, line))
        key = "parent_asin" if _present(obj.get("parent_asin")) else "asin"
        items.append(_id(obj, key, reviews_file, line, also="parent_asin"))
        times.append(_number(obj, "timestamp", reviews_file, line) / 1000.0)  # ms -> s
        ratings.append(_number(obj, "rating", reviews_file, line))
        rows.append(line)
    interactions = pl.DataFrame(
        {"user": users, "item": items, "timestamp": times, "rating": ratings, "source_row": rows},
        schema={"user": pl.String, "item": pl.String, "timestamp": pl.Float64, "rating": pl.Float64,
                "source_row": pl.Int64},
    )  # fmt: skip

    item_table = _read_meta(str(meta)) if meta is not None else None
    raw = RawDataset(
        interactions=interactions,
        items=item_table,
        interactions_file=reviews_file,
        items_file=str(meta) if meta is not None else None,
        text_fields=list(TEXT_FIELDS) if meta is not None else [],
        source=f"Amazon Reviews 2023 {reviews_file}" + (f" with {meta}" if meta is not None else ""),
    )
    raw.validate()
    return raw


def _read_meta(meta_file: str) -> pl.DataFrame:
    """One row per meta line: title (the id when absent), joined text fields, and the main image's URL."""
    records: dict[str, list[Any]] = {name: [] for name in ["item", "title", *TEXT_FIELDS, "image", "line"]}
    for line, obj in iter_jsonl(meta_file):
        item = _id(obj, "parent_asin", meta_file, line)
        title = _text(obj.get("title"), " ")
        records["item"].append(item)
        records["title"].append(title or item)
        categories = [obj.get("main_category"), *_as_list(obj.get("categories"))]
        unique = dict.fromkeys(c.strip() for c in categories if isinstance(c, str) and c.strip())
        records["category"].append(_text(list(unique), ", "))
        records["store"].append(_text(obj.get("store"), " "))
        records["features"].append(_text(obj.get("features"), "; "))
        records["description"].append(_text(obj.get("description"), " "))
        records["image"].append(_main_image(obj.get("images")))
        records["line"].append(line)
    df = pl.DataFrame(records, schema={**{k: pl.String for k in records if k != "line"}, "line": pl.Int64})
    repeated = ~df["item"].is_first_distinct()
    if repeated.any():
        line = int(df["line"].filter(repeated)[0])
        raise DataError(meta_file, f"parent_asin {df['item'].filter(repeated)[0]!r} appears a second time",
                        row=line, column="parent_asin")  # fmt: skip
    return df.drop("line")


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _id(obj: dict, key: str, file: str, line: int, also: str | None = None) -> str:
    """A required id: missing, null or blank raises DataError naming the key (and its alternative)."""
    value = obj.get(key)
    if not _present(value):
        keys = f"'{also}' or '{key}'" if also else f"'{key}'"
        raise DataError(file, f"missing key {keys}", row=line, column=key)
    if isinstance(value, (dict, list, bool)):
        raise DataError(file, f"id is a {type(value).__name__}, not a string", row=line, column=key)
    return str(value).strip()


def _number(obj: dict, key: str, file: str, line: int) -> float:
    """A required finite number (numeric strings accepted), else DataError naming the key."""
    if key not in obj or obj[key] is None:
        raise DataError(file, f"missing key '{key}'", row=line, column=key)
    value = obj[key]
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(file, f"cannot parse {value!r} as a number", row=line, column=key) from None
    if not math.isfinite(number):
        raise DataError(file, f"{value!r} is not a finite number", row=line, column=key)
    return number


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _text(value: Any, separator: str) -> str | None:
    """Render a string or a list of strings as one text; None when there is nothing."""
    parts = [str(v).strip() for v in _as_list(value) if _present(v) and not isinstance(v, (dict, list))]
    parts = [p for p in parts if p]
    return separator.join(parts) if parts else None


def _main_image(images: Any) -> str | None:
    """URL of the image whose variant is MAIN (else the first one that has a URL): large, then hi_res, then thumb."""
    candidates = [im for im in _as_list(images) if isinstance(im, dict)]
    candidates.sort(key=lambda im: im.get("variant") != "MAIN")  # stable: MAIN first, others in file order
    for image in candidates:
        for size in _IMAGE_SIZES:
            if _present(image.get(size)) and isinstance(image[size], str):
                return image[size].strip()
    return None
