"""`molar add-items`: new items into a trained content model's catalogue, without retraining.

The items file is read and validated by prepare's code (molar_core.data.new_items) and its contents are embedded
with the workspace's `embed` settings, which must be those of the store the model was trained on: contents that
store holds already are read from it, the others are encoded once into artifacts/added-items/embeddings, an
incremental cache of its own (artifacts/embeddings is the embed stage's output and every train stage's input: a
shard written there would make every model stale). The model's adapter turns the features into item vectors,
written with the items added before (their vectors recomputed by the model as it is now) to
artifacts/added-items/<model>/ (molar_core.added_items), which `molar_core.load` and `molar recommend` read.

The FAISS index (artifacts/index) is the index stage's output and stays as it is: `molar recommend` ranks a
model with added items exactly instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import torch

from molar_core.added_items import read_added_items, write_added_items
from molar_core.data.images import ImageConfig
from molar_core.data.new_items import read_new_items
from molar_core.encoders import build_encoder
from molar_core.encoders.base import settings_hash
from molar_core.errors import ArtifactError, MolarError
from molar_core.io import runtime_info
from molar_core.recommender import SASREC_NEW_ITEMS, load
from molar_core.store import Manifest, lookup_vectors, open_manifest, update_embeddings
from pipeline import paths
from pipeline.configs import encoder_config
from pipeline.params import EmbedParams, ImageParams, Params
from pipeline.readers import read_prepared, read_stats


def run(root: Path, model: str, items_file: Path | None, params: Params,
        log: Callable[[str], None] | None = None) -> dict:
    """Add the items of `items_file` to `model` (None: only recompute the vectors of the items added before, as
    after retraining the model); returns what was done."""
    rec = load(root / paths.model_dir(model), rebuild=paths.producer(model), added_items=False)
    if not rec.scores_new_items:
        raise MolarError(f"--model {model}: {SASREC_NEW_ITEMS}")
    stats = read_stats(root)
    rec.checkpoint.check_data(root / paths.ITEMS, stats["users"])
    recorded = str(rec.checkpoint.config["item_features"]["store"])
    store = root / recorded
    manifest = open_manifest(store)
    target = root / paths.added_items_dir(model)
    previous = read_added_items(target, f"molar add-items --model {model}") if target.exists() else None
    if previous is not None:
        again = f"remove {target} and add its items again"
        if previous.trained_items != rec.num_trained_items:
            raise ArtifactError(str(target), f"was made for a catalogue of {previous.trained_items} trained items, "
                                f"{model} now has {rec.num_trained_items}: {again}")
        if previous.meta["settings_hash"] != manifest.settings_hash:
            raise ArtifactError(str(target), f"its features were made with other encoder settings than {store} "
                                f"now has: {again}")
    elif items_file is None:
        raise MolarError(f"{model} has no added items to update: give an ITEMS_FILE")
    items = previous.items if previous is not None else None
    features = previous.features if previous is not None else None
    done = {"added": 0, "embedded": 0, "reused": 0, "images_missing": {}}
    if items_file is not None:
        prepared = read_prepared(root, "items")
        known = dict(zip(prepared["raw_item_id"].to_list(), prepared["item_id"].to_list()))
        if items is not None:
            known.update(zip(items["raw_item_id"].to_list(), items["item_id"].to_list()))
        first = rec.num_trained_items + (items.height if items is not None else 0) + 1
        new, missing = read_new_items(items_file, known, first, _image_config(params.prepare.images, root))
        feats, embedded = _features(root, store, manifest, new, params.embed, log)
        items = new if items is None else pl.concat([items, new])
        features = feats if features is None else torch.cat([features, feats])
        done.update(added=new.height, embedded=embedded, reused=new.height - embedded, images_missing=missing)
    assert items is not None and features is not None
    vectors = rec.encode_items(features)
    sources = [*(previous.meta.get("sources", []) if previous is not None else []),
               *([str(items_file)] if items_file is not None else [])]
    write_added_items(target, items, features, vectors, {
        "model": model, "trained_items": rec.num_trained_items, "settings_hash": manifest.settings_hash,
        "embeddings": {"trained": recorded, "added": str(paths.ADDED_EMBEDDINGS)},
        "scoring": rec.checkpoint.config.get("scoring"), "sources": sources, "runtime": runtime_info()})
    return {**done, "model": model, "path": str(target), "total": items.height,
            "item_ids": [rec.num_trained_items + 1, rec.num_trained_items + items.height]}


def _image_config(p: ImageParams, root: Path) -> ImageConfig:
    """prepare's image settings, relative paths read from the workspace (prepare runs in it)."""
    return ImageConfig(dir=str(root / p.dir) if p.dir else None, pattern=p.pattern,
                       root=str(root / p.root) if p.root else None, url_cache_dir=str(root / p.url_cache_dir),
                       url_schemes=list(p.url_schemes), max_bytes=p.max_bytes)


def _features(root: Path, store: Path, manifest: Manifest, items: pl.DataFrame, p: EmbedParams,
              log: Callable[[str], None] | None) -> tuple[torch.Tensor, int]:
    """(encoder features of `items` in order, contents encoded now): only contents that neither the model's store
    nor the added-items cache holds are encoded, with settings that must be the store's."""
    encoder = build_encoder(encoder_config(p, root))
    now = settings_hash(encoder.settings())
    if now != manifest.settings_hash:
        raise ArtifactError(str(store), f"was made with other encoder settings ({manifest.settings_hash[:12]}) than "
                            f"the embed params give now ({now[:12]}): new items would be encoded unlike the trained "
                            "ones; set the embed params back, or re-embed and retrain (`dvc repro`)")
    hashes = items["content_hash"].to_list()
    feats, found = lookup_vectors(store, hashes, manifest)
    todo = items.filter(pl.Series(~found.numpy()))
    if todo.height == 0:
        return feats, 0
    added = root / paths.ADDED_EMBEDDINGS
    report = update_embeddings(added, todo, encoder, p.shard_size, log=log, catalogue=False)
    extra, got = lookup_vectors(added, todo["content_hash"].to_list())
    if not bool(got.all()):
        raise ArtifactError(str(added), "lacks vectors it was just given (a concurrent writer?): run again")
    feats[~found] = extra
    return feats, report.embedded

