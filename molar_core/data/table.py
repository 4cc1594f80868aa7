"""Generic adapter: any interactions table (and optional items table) whose columns the user names.

For data already exported as .parquet, .csv, .tsv or .jsonl/.ndjson, so a new source needs a mapping, not code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from molar_core.data.raw import (
    RawDataset,
    iter_jsonl,
    positions_within_user,
    read_delimited,
    read_unquoted,
    require_columns,
)
from molar_core.errors import DataError

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_RESERVED = ("item", "title", "image")  # item-table output columns a text field must not shadow


@dataclass(frozen=True)
class TableMapping:
    """Which input column plays which role; None means the source has no such column."""

    user_col: str
    item_col: str
    time_col: str | None = None  # seconds, positions, or ISO dates; None: order of the user's rows
    rating_col: str | None = None
    item_key_col: str | None = None  # id column of the items table; None: same name as item_col
    title_col: str | None = None  # None: the raw id is the title
    text_cols: list[str] = field(default_factory=list)
    image_col: str | None = None  # a path relative to the image root, or a URL

    @property
    def item_key(self) -> str:
        return self.item_key_col or self.item_col


def load_table(
    interactions: str | Path, items: str | Path | None, mapping: TableMapping, encoding: str = "utf-8"
) -> RawDataset:
    """Read the interactions (and items) table named by `mapping`; the format follows the file extension."""
    inter_file = str(interactions)
    m = mapping
    needed = [m.user_col, m.item_col, *([m.time_col] if m.time_col else []), *([m.rating_col] if m.rating_col else [])]
    df, rows = _read(interactions, needed, encoding)
    _require_present(df, [m.user_col, m.item_col], inter_file, rows)
    out = pl.DataFrame({"user": _as_text(df[m.user_col], inter_file), "item": _as_text(df[m.item_col], inter_file)})
    if m.time_col:
        out = out.with_columns(timestamp=_parse_time(df[m.time_col], inter_file, rows))
    else:
        out = out.with_columns(timestamp=positions_within_user())
    if m.rating_col:
        out = out.with_columns(rating=_parse_number(df[m.rating_col], inter_file, rows))
    else:
        out = out.with_columns(rating=pl.lit(None, dtype=pl.Float64))
    out = out.with_columns(source_row=rows.cast(pl.Int64)).select("user", "item", "timestamp", "rating", "source_row")

    item_table, text_fields = (None, [])
    if items is not None:
        item_table, text_fields, _ = read_items(items, m, encoding)
    raw = RawDataset(
        interactions=out,
        items=item_table,
        interactions_file=inter_file,
        items_file=str(items) if items is not None else None,
        text_fields=text_fields,
        source=f"table {inter_file}" + (f" with items {items}" if items is not None else ""),
    )
    raw.validate()
    return raw


def read_items(items: str | Path, m: TableMapping,
               encoding: str = "utf-8") -> tuple[pl.DataFrame, list[str], pl.Series]:
    """Items table: unique ids, title (the id when absent or blank), text fields, image (null when blank), and
    the file row (line, or record for parquet) of each item, for messages about it."""
    file = str(items)
    optional = [c for c in [m.title_col, *m.text_cols, m.image_col] if c]
    df, rows = _read(items, [m.item_key, *optional], encoding)
    _require_present(df, [m.item_key], file, rows)
    item = _as_text(df[m.item_key], file)
    repeated = ~item.is_first_distinct()
    if repeated.any():
        idx = int(repeated.arg_true()[0])
        raise DataError(file, f"id {item[idx]!r} appears a second time", row=int(rows[idx]), column=m.item_key)

    def text(column: str) -> pl.Series:
        value = _as_text(df[column], file).alias("v")
        return value.to_frame().select(pl.when(pl.col("v") == "").then(None).otherwise(pl.col("v"))).to_series()

    none = pl.Series([None] * df.height, dtype=pl.String)
    title = text(m.title_col) if m.title_col else none
    text_fields = [f"{c}_text" if c in _RESERVED else c for c in m.text_cols]
    out = pl.DataFrame(
        {
            "item": item,
            "title": title.fill_null(item),
            **{name: text(c) for name, c in zip(text_fields, m.text_cols, strict=True)},
            "image": text(m.image_col) if m.image_col else none,
        }
    )
    return out, text_fields, rows


def table_columns(path: str | Path, encoding: str = "utf-8") -> list[str]:
    """The column names of a table file (JSON lines: every key of any line, in first-seen order), so that a
    reader of fixed column names can tell which of the optional ones a file has."""
    path = Path(path)
    file = str(path)
    kind = _kind(path)
    if kind == "jsonl":
        keys: dict[str, None] = {}
        for _, obj in iter_jsonl(path):
            keys.update(dict.fromkeys(obj))
        return list(keys)
    if kind == "parquet":
        if not path.exists():
            raise DataError(file, "file not found")
        try:
            return list(pl.read_parquet_schema(path))
        except Exception as err:  # noqa: BLE001 - any reader failure is a bad file to the user
            raise DataError(file, f"cannot read as parquet: {err}") from None
    df = read_delimited(path, ",", encoding=encoding) if kind == "csv" else read_unquoted(path, "\t", encoding=encoding)
    return [df.columns[0].lstrip("\ufeff"), *df.columns[1:]]


def _kind(path: Path) -> str:
    """parquet, csv, tsv or jsonl from the file name (only JSON lines may be gzip-compressed)."""
    name = path.name.lower()
    compressed = name.endswith(".gz")
    kind = FORMATS.get(Path(name.removesuffix(".gz")).suffix)
    if kind is None or (compressed and kind != "jsonl"):
        raise DataError(str(path), "unknown table format (use .parquet, .csv, .tsv, .jsonl, .ndjson or .jsonl.gz)")
    return kind


def _read(path: str | Path, needed: list[str], encoding: str) -> tuple[pl.DataFrame, pl.Series]:
    """Read the `needed` columns of a table and the file row (line, or record for parquet) of each row."""
    path = Path(path)
    file = str(path)
    needed = list(dict.fromkeys(needed))
    kind = _kind(path)
    if kind == "jsonl":
        return _read_jsonl(file, needed)
    if kind == "parquet":
        if not path.exists():
            raise DataError(file, "file not found")
        try:
            schema = pl.read_parquet_schema(path)
        except Exception as err:  # noqa: BLE001 - any reader failure is a bad file to the user
            raise DataError(file, f"cannot read as parquet: {err}") from None
        require_columns(pl.DataFrame(schema=schema), needed, file)
        df = pl.read_parquet(path, columns=needed)
        if df.height == 0:
            raise DataError(file, "file has no rows")
        return df, pl.Series("row", range(1, df.height + 1), dtype=pl.Int64)
    df = read_delimited(path, ",", encoding=encoding) if kind == "csv" else read_unquoted(path, "\t", encoding=encoding)
    df = df.rename({df.columns[0]: df.columns[0].lstrip("\ufeff")})  # a UTF-8 byte order mark is not a name
    require_columns(df, needed, file)
    return df.select(needed), pl.Series("row", range(2, df.height + 2), dtype=pl.Int64)


def _read_jsonl(file: str, needed: list[str]) -> tuple[pl.DataFrame, pl.Series]:
    """JSON lines as String columns; a key absent from a line is null there, absent from every line is missing."""
    values: dict[str, list[str | None]] = {c: [] for c in needed}
    lines: list[int] = []
    seen: set[str] = set()
    for line, obj in iter_jsonl(file):
        for column in needed:
            if column in obj:
                seen.add(column)
            values[column].append(_json_text(obj.get(column)))
        lines.append(line)
    for column in needed:
        if column not in seen:
            raise DataError(file, f"missing key '{column}' (on every line)", column=column)
    return pl.DataFrame(values, schema={c: pl.String for c in needed}), pl.Series("row", lines, dtype=pl.Int64)


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        parts = [p for p in (_json_text(v) for v in value) if p]
        return ", ".join(parts)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _as_text(s: pl.Series, file: str) -> pl.Series:
    """A column as String: ids and text may be numbers (parquet) or lists of strings (joined with ', ')."""
    if s.dtype == pl.String:
        return s.str.strip_chars()
    try:
        if isinstance(s.dtype, pl.List):
            return s.cast(pl.List(pl.String)).list.join(", ")
        return s.cast(pl.String)
    except pl.exceptions.PolarsError:
        raise DataError(file, f"a {s.dtype} column cannot be read as text", column=s.name) from None


def _first_bad(bad: pl.Series, s: pl.Series, file: str, rows: pl.Series, message: str) -> None:
    if bad.any():
        idx = int(bad.arg_true()[0])
        raise DataError(file, message.format(value=s[idx]), row=int(rows[idx]), column=s.name)


def _require_present(df: pl.DataFrame, columns: list[str], file: str, rows: pl.Series) -> None:
    for column in columns:
        s = df[column]
        bad = s.is_null()
        if s.dtype == pl.String:
            bad = bad | (s.str.strip_chars() == "")
        _first_bad(bad, s, file, rows, "value is missing")


def _parse_number(s: pl.Series, file: str, rows: pl.Series) -> pl.Series:
    """A required finite number on every row (strings are parsed), as Float64."""
    if s.dtype.is_numeric():
        parsed = s.cast(pl.Float64)
    elif s.dtype == pl.String:
        parsed = s.str.strip_chars().cast(pl.Float64, strict=False)
    else:
        raise DataError(file, f"a {s.dtype} column cannot be read as numbers", column=s.name)
    _first_bad(
        parsed.is_null() | parsed.is_nan() | parsed.is_infinite(), s, file, rows, "cannot parse {value!r} as a number"
    )
    return parsed


def _parse_time(s: pl.Series, file: str, rows: pl.Series) -> pl.Series:
    """Seconds or positions as numbers; dates (datetime columns, or ISO strings) as epoch seconds."""
    if s.dtype == pl.Date:
        s = s.cast(pl.Datetime("us"))
    if isinstance(s.dtype, pl.Datetime):
        _first_bad(s.is_null(), s, file, rows, "value is missing")
        return s.dt.epoch("us").cast(pl.Float64) / 1e6
    if s.dtype != pl.String:
        return _parse_number(s, file, rows)
    text = s.str.strip_chars()
    number = text.cast(pl.Float64, strict=False)
    if not (number.is_null() | number.is_nan() | number.is_infinite()).any() or number[0] is not None:
        return _parse_number(s, file, rows)  # a numeric column; reports its first bad value
    message = "cannot parse {value!r} as a number or a date (use one format for the whole column)"
    try:
        parsed = text.str.to_datetime(strict=False, time_unit="us")  # strict in effect: nulls are errors below
    except pl.exceptions.PolarsError:  # no date format fits the first value
        raise DataError(file, message.format(value=s[0]), row=int(rows[0]), column=s.name) from None
    _first_bad(parsed.is_null(), s, file, rows, message)
    return parsed.dt.epoch("us").cast(pl.Float64) / 1e6  # naive datetimes count as UTC
