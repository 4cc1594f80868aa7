"""Items to add to a trained catalogue, read from a user's table as `prepare` reads an items table.

Columns (CSV, TSV, parquet or JSON lines): `raw_item_id` (required, unique, not already in the catalogue),
`title` (optional; the raw id when absent or blank), `text` (optional: the whole item text as the encoder reads
it, as in items.parquet; without it the text is rendered from the title and every other column, as `prepare`
renders its text fields: "Title: X. Year: 1995. Genres: Comedy"), and `image` or `image_path` (optional: a path
inside the image root, the file's directory by default, or a URL). Without an image column, a configured image
directory is searched by raw id, as `prepare` does. The reading, validation, image and text code is prepare's,
so an added item's text and content hash are what they would have been had it been in the data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl

from molar_core.data.images import ImageConfig, attach_images
from molar_core.data.processing import items_table, render_text
from molar_core.data.table import TableMapping, read_items, table_columns
from molar_core.errors import DataError

ID, TITLE, TEXT = "raw_item_id", "title", "text"
IMAGE_COLUMNS = ("image", "image_path")


def read_new_items(path: str | Path, known: dict[str, int], first_id: int, images: ImageConfig | None = None,
                   encoding: str = "utf-8") -> tuple[pl.DataFrame, dict[str, int]]:
    """(items with the columns of items.parquet and item_id first_id.., items whose image is missing by reason).

    `known` maps the raw ids already in the catalogue to their item ids: such a row is refused, naming it, as is
    a raw id repeated within the file and a missing id or text."""
    file = str(path)
    columns = table_columns(path, encoding)
    if ID not in columns:
        raise DataError(file, f"missing column '{ID}' (columns present: {', '.join(columns)}); the other item "
                        f"columns are {TITLE}, {TEXT} or text fields, and image or image_path", column=ID)
    image_cols = [c for c in IMAGE_COLUMNS if c in columns]
    if len(image_cols) > 1:
        raise DataError(file, "has both an image and an image_path column: keep the one holding each item's image "
                        "path or URL")
    verbatim = TEXT in columns
    fields = [TEXT] if verbatim else [c for c in columns if c not in (ID, TITLE, *IMAGE_COLUMNS)]
    mapping = TableMapping(user_col=ID, item_col=ID, title_col=TITLE if TITLE in columns else None,
                           text_cols=fields, image_col=image_cols[0] if image_cols else None)
    items, text_fields, rows = read_items(path, mapping, encoding)
    for i, raw in enumerate(items["item"].to_list()):
        if raw in known:
            raise DataError(file, f"item {raw!r} is already in the catalogue (item_id {known[raw]}): an added item "
                            "needs a raw id the catalogue does not have", row=int(rows[i]), column=ID)
    if verbatim and items[TEXT].is_null().any():
        idx = int(items[TEXT].is_null().arg_true()[0])
        raise DataError(file, "value is missing (the item's text; leave the column out to render the text from "
                        "the title and the other columns)", row=int(rows[idx]), column=TEXT)
    cfg = images or ImageConfig()
    if image_cols:  # the file names each item's image: a directory keyed by id does not apply
        cfg = dataclasses.replace(cfg, dir=None)
    items, missing = attach_images(items, cfg, file, rows.to_list())
    if not image_cols and cfg.dir is None:
        missing = {}  # no image source at all: text-only items, nothing went missing
    titles = items["title"].to_list()
    if verbatim:
        texts = items[TEXT].to_list()
    else:
        values = [items[f].to_list() for f in text_fields]
        texts = [render_text(t, {f: values[j][i] for j, f in enumerate(text_fields)}) for i, t in enumerate(titles)]
    out = items_table(range(first_id, first_id + items.height), items["item"], titles, texts,
                      items["image_path"].to_list(), [True] * items.height)
    return out, missing
