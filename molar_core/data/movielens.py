"""Adapter for the GroupLens ML-100K directory layout (`u.data`, `u.item`), as the official zip extracts.

It is the layout `acquire_ml100k` fetches from GroupLens, so users with no local copy get the same data.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from molar_core.data.raw import (
    RawDataset,
    parse_float_column,
    read_unquoted,
    require_unique,
    require_values,
    with_source_rows,
)
from molar_core.errors import DataError

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
ITEM_COLUMNS = ["item", "raw_title", "release_date", "video_release_date", "imdb_url", *GENRES]
TEXT_FIELDS = ["year", "genres"]
# "Toy Story (1995)" -> title "Toy Story", year "1995"; only the last parenthesised year is the year.
_TITLE_YEAR = r"^(.*?)\s*\((\d{4})\)\s*$"


def load_movielens(path: str | Path, encoding: str = "latin-1") -> RawDataset:
    """Read `u.data` (user, item, rating, timestamp; tab-separated) and `u.item` (pipe-separated) of `path`."""
    path = Path(path)
    data_file, item_file = str(path / "u.data"), str(path / "u.item")

    data = read_unquoted(data_file, "\t", columns=["user", "item", "rating", "timestamp"], encoding=encoding)
    require_values(data, ["user", "item"], data_file, first_row=1)
    interactions = with_source_rows(
        data.select(
            pl.col("user").str.strip_chars(),
            pl.col("item").str.strip_chars(),
            timestamp=parse_float_column(data, "timestamp", data_file, first_row=1),
            rating=parse_float_column(data, "rating", data_file, first_row=1),
        ),
        first_row=1,
    ).select("user", "item", "timestamp", "rating", "source_row")

    items = _read_items(item_file, encoding)
    raw = RawDataset(
        interactions=interactions,
        items=items,
        interactions_file=data_file,
        items_file=item_file,
        text_fields=list(TEXT_FIELDS),
        source=f"GroupLens ML-100K directory {path}",
    )
    raw.validate()
    return raw


def _read_items(item_file: str, encoding: str) -> pl.DataFrame:
    """Parse u.item: title and year split apart, the 19 genre flags rendered as a ', '-joined genre list."""
    df = read_unquoted(item_file, "|", columns=ITEM_COLUMNS, encoding=encoding)
    require_values(df, ["item"], item_file, first_row=1)
    df = df.with_columns(pl.col("item").str.strip_chars())
    require_unique(df, "item", item_file, first_row=1)
    for genre in GENRES:
        flags = df[genre].str.strip_chars()
        bad = ~flags.is_in(["0", "1"])
        if bad.any():
            idx = int(bad.arg_true()[0])
            raise DataError(item_file, f"genre flag {flags[idx]!r} is not 0 or 1", row=idx + 1, column=genre)

    raw_title = pl.col("raw_title").str.strip_chars()
    title_year = raw_title.str.extract(_TITLE_YEAR, 2)
    # Titles without "(year)" keep their text; the year then comes from the release date ("01-Jan-1995").
    date_year = pl.col("release_date").str.strip_chars().str.extract(r"(\d{4})$", 1)
    genres = pl.concat_list(
        [pl.when(pl.col(g).str.strip_chars() == "1").then(pl.lit(g)).otherwise(pl.lit(None)) for g in GENRES]
    ).list.drop_nulls()
    return df.select(
        "item",
        title=pl.coalesce(raw_title.str.extract(_TITLE_YEAR, 1), raw_title),
        year=pl.coalesce(title_year, date_year),
        genres=pl.when(genres.list.len() > 0).then(genres.list.join(", ")).otherwise(pl.lit(None, pl.String)),
        image=pl.lit(None, dtype=pl.String),
    )
