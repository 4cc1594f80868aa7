"""The common shape every dataset adapter returns, and checked readers adapters share.

Adapters only parse; filtering, ids and splits happen in `molar_core.data.processing`,
so every source goes through the same, tested accounting of rows.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from molar_core.errors import DataError

# Columns of RawDataset.interactions
INTERACTION_COLUMNS = {
    "user": pl.String,  # raw user id
    "item": pl.String,  # raw item id
    "timestamp": pl.Float64,  # seconds, or a position (0 = oldest) where the source has no time
    "rating": pl.Float64,  # null where the source has no rating
    "source_row": pl.Int64,  # 1-based line/record number in the interactions file (for messages)
}


@dataclass
class RawDataset:
    """Parsed but unfiltered data of one source.

    interactions: columns INTERACTION_COLUMNS, one row per input interaction row, in file order.
    items: columns `item` (raw id, String), `title` (String), one String column per entry of
      `text_fields`, and `image` (String, nullable: a path relative to the image root, or a URL).
      None when the source has no item table (titles then fall back to the raw id).
    """

    interactions: pl.DataFrame
    items: pl.DataFrame | None
    interactions_file: str
    items_file: str | None = None
    text_fields: list[str] = field(default_factory=list)
    source: str = ""  # what was read, said in the stage summary (e.g. "local dir ...", "grouplens zip")

    def validate(self) -> None:
        """Check the adapter kept the contract (a programming error otherwise)."""
        for name, dtype in INTERACTION_COLUMNS.items():
            if name not in self.interactions.columns:
                raise AssertionError(f"adapter output lacks interactions column {name}")
            if self.interactions.schema[name] != dtype:
                raise AssertionError(f"interactions.{name} is {self.interactions.schema[name]}, want {dtype}")
        if self.items is not None:
            for name in ["item", "title", "image", *self.text_fields]:
                if name not in self.items.columns:
                    raise AssertionError(f"adapter output lacks items column {name}")


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """Read a whole text file; an empty file or bytes invalid in `encoding` raise DataError with the line."""
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), "file not found")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(str(path), "file is empty")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            str(path), f"not valid {encoding} text at byte {err.start} (set the file's encoding param)", row=line
        ) from None


def read_delimited(
    path: str | Path,
    separator: str,
    columns: list[str] | None = None,
    has_header: bool = True,
    encoding: str = "utf-8",
    quote_char: str | None = '"',
) -> pl.DataFrame:
    """Read a CSV/TSV as all-String columns; with `columns`, they are the names (no header) or required names."""
    text = read_text(path, encoding)
    try:
        df = pl.read_csv(
            io.StringIO(text),
            separator=separator,
            has_header=has_header,
            new_columns=columns if not has_header else None,
            infer_schema=False,
            quote_char=quote_char,
        )
    except pl.exceptions.PolarsError as err:
        raise DataError(str(path), f"cannot parse as delimited text: {err}") from None
    if df.height == 0:
        raise DataError(str(path), "file has a header but no rows")
    return df


def require_columns(df: pl.DataFrame, required: list[str], file: str) -> None:
    """Raise DataError naming the file and the first missing column, and the columns that exist."""
    for name in required:
        if name not in df.columns:
            raise DataError(file, f"missing column '{name}' (columns present: {', '.join(df.columns)})", column=name)


def parse_float_column(df: pl.DataFrame, column: str, file: str, first_row: int) -> pl.Series:
    """Cast a String column to Float64; the first unparseable value raises DataError with its row.

    `first_row` is the file line of df's first row (2 for a CSV with a header), so rows in messages are lines.
    Nulls (empty fields) are errors too: a timestamp or rating that is missing is bad input.
    """
    raw = df[column]
    parsed = raw.str.strip_chars().cast(pl.Float64, strict=False)
    bad = parsed.is_null() | parsed.is_nan() | parsed.is_infinite()
    if bad.any():
        idx = int(bad.arg_true()[0])
        raise DataError(file, f"cannot parse {raw[idx]!r} as a number", row=first_row + idx, column=column)
    return parsed


def with_source_rows(df: pl.DataFrame, first_row: int) -> pl.DataFrame:
    """Add `source_row`, the 1-based line of each row in its file."""
    return df.with_row_index("source_row", offset=first_row).with_columns(pl.col("source_row").cast(pl.Int64))


def read_unquoted(
    path: str | Path, separator: str, columns: list[str] | None = None, encoding: str = "utf-8"
) -> pl.DataFrame:
    """Read an unquoted delimited file (TSV, GroupLens '|') as all-String columns, checking every line's fields.

    Unlike `read_delimited`, a line with too many or too few fields (or a blank line) is reported with its
    line number, which polars alone cannot do. `columns` names a headerless file; None reads the header.
    """
    text = read_text(path, encoding)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line terminator
    counts = pl.Series(lines).str.strip_chars_end("\r").str.count_matches(separator, literal=True) + 1
    blank = pl.Series(lines).str.strip_chars() == ""
    expected = len(columns) if columns is not None else int(counts[0])
    bad = (counts != expected) | blank
    if bad.any():
        idx = int(bad.arg_true()[0])
        what = "is blank" if blank[idx] else f"has {counts[idx]} fields, expected {expected}"
        raise DataError(str(path), f"line {what}", row=idx + 1)
    try:
        df = pl.read_csv(
            io.StringIO(text),
            separator=separator,
            has_header=columns is None,
            new_columns=columns,
            infer_schema=False,
            quote_char=None,
        )
    except pl.exceptions.PolarsError as err:
        raise DataError(str(path), f"cannot parse as delimited text: {err}") from None
    if df.height == 0:
        raise DataError(str(path), "file has a header but no rows")
    return df


def require_values(df: pl.DataFrame, columns: list[str], file: str, first_row: int) -> None:
    """Raise DataError at the first null or blank value of `columns` (ids must be present on every row)."""
    for name in columns:
        col = df[name]
        bad = col.is_null()
        if col.dtype == pl.String:
            bad = bad | (col.str.strip_chars() == "")
        if bad.any():
            idx = int(bad.arg_true()[0])
            raise DataError(file, "value is missing", row=first_row + idx, column=name)


def require_unique(df: pl.DataFrame, column: str, file: str, first_row: int) -> None:
    """Raise DataError at the first repeated id: an item table with two rows for one id is ambiguous."""
    repeated = ~df[column].is_first_distinct()
    if repeated.any():
        idx = int(repeated.arg_true()[0])
        raise DataError(file, f"id {df[column][idx]!r} appears a second time", row=first_row + idx, column=column)


def positions_within_user() -> pl.Expr:
    """Float64 position (0, 1, ...) of each row among its user's rows, in file order: time where none is given."""
    return pl.int_range(pl.len()).over("user").cast(pl.Float64)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, parsed object) for each non-blank line of a JSON-lines file (.gz read transparently).

    Streams the file, so multi-GB review dumps need no whole-file copy; bad UTF-8, bad JSON and
    non-object lines raise DataError with the line; a file with no records raises too.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), "file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    seen = False
    with opener(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    str(path), f"not valid utf-8 text at byte {err.start} of the line", row=number
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(str(path), f"not valid JSON: {err.msg} at column {err.colno}", row=number) from None
            if not isinstance(obj, dict):
                raise DataError(str(path), f"expected a JSON object, got {type(obj).__name__}", row=number)
            seen = True
            yield number, obj
    if not seen:
        raise DataError(str(path), "file is empty")
