"""DVC stage `prepare`: a dataset -> items.parquet, train/valid/test.parquet and stats.json."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from molar_core.data.acquire import acquire_ml100k
from molar_core.data.amazon2023 import load_amazon2023
from molar_core.data.images import ImageConfig, attach_images
from molar_core.data.movielens import load_movielens
from molar_core.data.processing import ProcessConfig, process
from molar_core.data.raw import RawDataset
from molar_core.data.recbole_atomic import load_recbole_atomic
from molar_core.data.table import TableMapping, load_table
from molar_core.errors import DataError
from molar_core.io import atomic_dir, runtime_info, write_json_atomic, write_parquet_atomic
from pipeline import paths
from pipeline.params import Params, PrepareParams
from stages.common import params_from_argv, run_main, summary


def load_raw(p: PrepareParams, root: Path) -> RawDataset:
    """Pick the adapter named by prepare.source (ML-100K is downloaded when no local copy is configured)."""
    if p.source == "movielens":
        if p.path is None:
            got = acquire_ml100k(root / p.download.cache_dir, list(p.download.urls),
                                 p.download.pypi_spec if p.download.pypi_fallback else None)
            raw = got.load()
            raw.source = got.source
            return raw
        d = Path(p.path)
        if (d / "u.data").exists():
            raw = load_movielens(d, p.encoding)
        elif list(d.glob("*.inter")):
            raw = load_recbole_atomic(d)
        else:
            raise DataError(str(d), "prepare.path holds neither u.data (GroupLens) nor a .inter file (RecBole)")
        raw.source = f"local {d}"
        return raw
    if p.source == "recbole_atomic":
        raw = load_recbole_atomic(Path(p.path))
    elif p.source == "amazon2023":
        raw = load_amazon2023(p.amazon.reviews, p.amazon.meta)
    else:
        t = p.table
        mapping = TableMapping(user_col=t.user_col, item_col=t.item_col, time_col=t.time_col,
                               rating_col=t.rating_col, item_key_col=t.item_key_col, title_col=t.title_col,
                               text_cols=list(t.text_cols), image_col=t.image_col)
        raw = load_table(t.interactions, t.items, mapping)
    raw.source = f"local {raw.interactions_file}"
    return raw


def run(p: PrepareParams, root: Path = Path(".")) -> dict:
    raw = load_raw(p, root)
    items = raw.items
    if items is None and p.images.dir is not None:  # images keyed by id need an item table to hang on
        ids = raw.interactions["item"].unique(maintain_order=True)
        items = pl.DataFrame({"item": ids, "title": ids, "image": pl.Series([None] * len(ids), dtype=pl.String)})
        raw.items = items
    image_counts: dict[str, int] = {}
    if items is not None:
        cfg = ImageConfig(dir=p.images.dir, pattern=p.images.pattern, root=p.images.root,
                          url_cache_dir=str(root / p.images.url_cache_dir), url_schemes=list(p.images.url_schemes),
                          max_bytes=p.images.max_bytes)
        items, image_counts = attach_images(items, cfg, raw.items_file)
    prepared = process(raw, ProcessConfig(p.min_rating, p.k_core_user, p.k_core_item, p.max_seq_len,
                                          p.sample_users, p.sample_seed, p.cold_items.fraction, p.cold_items.by,
                                          p.cold_items.seed), items)
    stats = prepared.stats
    stats["images"]["missing_by_reason_in_items_table"] = image_counts
    stats["params"] = p.model_dump()
    stats["runtime"] = runtime_info()
    with atomic_dir(root / paths.PREPARED) as out:
        write_parquet_atomic(out / paths.ITEMS.name, prepared.items)
        write_parquet_atomic(out / paths.TRAIN.name, prepared.train)
        write_parquet_atomic(out / paths.VALID.name, prepared.valid)
        write_parquet_atomic(out / paths.TEST.name, prepared.test)
        write_json_atomic(out / paths.STATS.name, stats)
    d = stats["rows"]["dropped"]
    s = stats["sample"]
    users = f"{stats['users']:,} users" + (f" (a random {s['users']:,} of {s['from_users']:,}, seed {s['seed']})"
                                           if s else "")
    c, cold = stats["cold_items"], ""
    if c:
        cold = (f"; {c['items']:,} cold items (ids {c['ids'][0]}..{c['ids'][1]}, by {c['by']}) held out of "
                  f"training, the targets of {c['test_targets_cold']:,} test users")
    summary("prepare", f"{users}, {stats['items']:,} items, {stats['interactions']:,} interactions "
            f"from {stats['rows']['input']:,} rows (dropped: {', '.join(f'{k} {v:,}' for k, v in d.items() if v) or 'none'}); "
            f"images for {stats['images']['item_coverage']:.1%} of items; source: {stats['source']}{cold}")
    return stats


def main(params: Params | None = None) -> None:
    """`python -m stages.prepare [params.yaml]`, or `molar` with params it has already validated."""
    params = params or params_from_argv()
    run(params.prepare)


if __name__ == "__main__":
    run_main(main)
