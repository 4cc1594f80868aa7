"""Adapter for RecBole atomic files (`<name>.inter`, optional `<name>.item`), the format RecBole ships
its example data in (ML-100K inside the recbole wheel) and many benchmark sets are distributed as.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from molar_core.data.raw import (
    RawDataset,
    parse_float_column,
    positions_within_user,
    read_unquoted,
    require_columns,
    require_unique,
    require_values,
    with_source_rows,
)

TITLE_COLUMNS = ["movie_title", "title"]  # first present one is the item title


def load_recbole_atomic(directory: str | Path, name: str | None = None, encoding: str = "utf-8") -> RawDataset:
    """Read `<directory>/<name>.inter` and, when present, `<name>.item`; `name` defaults to the directory's name.

    Without a timestamp column, time is the row's position among its user's rows (file order); without a
    rating column, ratings are null.
    """
    directory = Path(directory)
    name = name or directory.resolve().name
    inter_file = str(directory / f"{name}.inter")
    item_path = directory / f"{name}.item"

    inter, _ = _read_atomic(inter_file, encoding)
    require_columns(inter, ["user_id", "item_id"], inter_file)
    require_values(inter, ["user_id", "item_id"], inter_file, first_row=2)
    out = inter.select(user=pl.col("user_id").str.strip_chars(), item=pl.col("item_id").str.strip_chars())
    if "timestamp" in inter.columns:
        out = out.with_columns(timestamp=parse_float_column(inter, "timestamp", inter_file, first_row=2))
    else:
        out = out.with_columns(timestamp=positions_within_user())
    if "rating" in inter.columns:
        out = out.with_columns(rating=parse_float_column(inter, "rating", inter_file, first_row=2))
    else:
        out = out.with_columns(rating=pl.lit(None, dtype=pl.Float64))
    interactions = with_source_rows(out, first_row=2).select("user", "item", "timestamp", "rating", "source_row")

    items, text_fields = (None, [])
    if item_path.exists():
        items, text_fields = _read_items(str(item_path), encoding)
    raw = RawDataset(
        interactions=interactions,
        items=items,
        interactions_file=inter_file,
        items_file=str(item_path) if items is not None else None,
        text_fields=text_fields,
        source=f"RecBole atomic files {directory / name}",
    )
    raw.validate()
    return raw


def _read_atomic(file: str, encoding: str) -> tuple[pl.DataFrame, dict[str, str]]:
    """Read an atomic file as String columns named without their `:type` suffix; also return name -> type."""
    df = read_unquoted(file, "\t", encoding=encoding)
    types = {}
    for header in df.columns:
        field, _, kind = header.strip().partition(":")
        types[field] = kind
    return df.rename({h: h.strip().partition(":")[0] for h in df.columns}), types


def _read_items(item_file: str, encoding: str) -> tuple[pl.DataFrame, list[str]]:
    """Items: title from movie_title/title (else the id); every other column a text field."""
    df, types = _read_atomic(item_file, encoding)
    require_columns(df, ["item_id"], item_file)
    require_values(df, ["item_id"], item_file, first_row=2)
    df = df.with_columns(pl.col("item_id").str.strip_chars())
    require_unique(df, "item_id", item_file, first_row=2)
    title_col = next((c for c in TITLE_COLUMNS if c in df.columns), None)
    sources = [c for c in df.columns if c not in ("item_id", title_col)]
    # A text column named like an output column keeps a suffixed name, so no value is lost.
    text_fields = [f"{c}_text" if c in ("item", "title", "image") else c for c in sources]

    def text(column: str, out: str) -> pl.Expr:
        value = pl.col(column).str.strip_chars()
        if types[column] == "token_seq":  # space-separated tokens: "Animation Children's" -> "Animation, Children's"
            value = value.str.split(" ").list.eval(pl.element().filter(pl.element() != "")).list.join(", ")
        return pl.when(value == "").then(pl.lit(None, pl.String)).otherwise(value).alias(out)

    title = pl.col(title_col).str.strip_chars() if title_col else pl.col("item_id")
    items = df.select(
        pl.col("item_id").alias("item"),
        pl.when(title.is_null() | (title == "")).then(pl.col("item_id")).otherwise(title).alias("title"),
        *[text(c, out) for c, out in zip(sources, text_fields, strict=True)],
        pl.lit(None, dtype=pl.String).alias("image"),
    )
    return items, text_fields
