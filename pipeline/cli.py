"""`molar`: run stages, check params, and inspect artifacts from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer
from rich.table import Table

from molar_core.errors import ArtifactError, MolarError
from pipeline import paths
from pipeline.params import load_params

app = typer.Typer(help="molar: multimodal sequential recommendation (Molar) as a DVC pipeline.",
                  no_args_is_help=True, add_completion=False)
inspect_app = typer.Typer(help="Look inside artifacts.", no_args_is_help=True)
app.add_typer(inspect_app, name="inspect")

PARAMS = typer.Option(Path("params.yaml"), "--params", "-p", help="params file")


def _fail(err: Exception) -> None:
    from pipeline.console import print_error

    print_error(err)
    raise typer.Exit(1)


def _stage(name: str, params: Path, *args: str) -> None:
    """Run a stage's own entry point (the one DVC calls) with the validated params (and the stage's arguments)."""
    import importlib

    try:
        p = load_params(params)
        importlib.import_module(f"stages.{name}").main(p, *args)
    except MolarError as err:
        _fail(err)


@app.command()
def prepare(params: Path = PARAMS) -> None:
    """Read the dataset, filter, split leave-one-out: data/prepared/."""
    _stage("prepare", params)


@app.command("train-id")
def train_id(params: Path = PARAMS) -> None:
    """Train SASRec over item ids: artifacts/sasrec/."""
    _stage("train_id", params)


@app.command()
def train(variant: str = typer.Argument(..., help="a key of train_variants (e.g. content, molar)"),
          params: Path = PARAMS) -> None:
    """Train the content model VARIANT of train_variants (post-aligned to SASRec when it says so): artifacts/VARIANT/."""
    _stage("train", params, variant)


@app.command("finetune-encoder")
def finetune_encoder(params: Path = PARAMS) -> None:
    """Stage 1: fine-tune the MLLM item encoder on the dataset's mixtures: artifacts/encoder/."""
    _stage("finetune_encoder", params)


@app.command()
def embed(params: Path = PARAMS) -> None:
    """Embed every item (incremental, resumable cache): artifacts/embeddings/."""
    _stage("embed", params)


@app.command()
def index(params: Path = PARAMS) -> None:
    """Build the FAISS index of each model's item vectors: artifacts/index/."""
    _stage("index", params)


@app.command()
def evaluate(params: Path = PARAMS) -> None:
    """Full-ranking evaluation: metrics/metrics.json, metrics/per_user.parquet, plots/evaluate/."""
    _stage("evaluate", params)


@app.command()
def repro(stage: str = typer.Argument(None, help="stage to reproduce (default: all)")) -> None:
    """Run `dvc repro` (only stages whose inputs changed run)."""
    raise typer.Exit(subprocess.call(["dvc", "repro", *([stage] if stage else [])]))


@app.command()
def recommend(user: str = typer.Option(None, "--user", "-u", help="raw user id (as in the source data)"),
              all_users: bool = typer.Option(False, "--all", help="every user (write --out)"),
              history: str = typer.Option(None, "--history", help="an ad-hoc history: prepared item ids, oldest "
                                          "first, comma-separated (e.g. 12,55,301)"),
              items_file: Path = typer.Option(None, "--items-file", help="rank only these items: a .txt file with "
                                              "one prepared item id per line, or a .csv or .parquet file with a "
                                              "column item_id"),
              out: Path = typer.Option(None, help="with --all: output file (.parquet or .csv)"),
              k: int = typer.Option(10, "--k", "-k", min=1, help="items per user"),
              model: str = typer.Option("molar", "--model", "-m", help="model name in the workspace"),
              checkpoint: Path = typer.Option(None, help="a model directory (e.g. copied elsewhere) instead of --model"),
              prepared: Path = typer.Option(None, help="prepared data directory (default ROOT/data/prepared)"),
              embeddings: Path = typer.Option(None, help="the embedding store a content model reads its item "
                                              "features from (default: the one its config.json records, in the "
                                              "workspace of the model, or of --prepared for --checkpoint)"),
              include_seen: bool = typer.Option(False, help="do not exclude items the user has interacted with"),
              root: Path = typer.Option(Path("."), help="workspace (the directory of dvc.yaml)")) -> None:
    """Top-k items for one user (a table), for every user (a file) or for an ad-hoc history, seen items excluded,
    with titles; items added by `molar add-items` compete too. The reloaded model encodes each history (a user's:
    their whole known sequence); --user, --history and --items-file rank exactly, --all searches the FAISS index.
    \f
    Every mode reloads the model (molar_core.load) and encodes a history with it: --user and --all the user's
    whole known sequence (train items, validation and test item: the history of the saved `next` vectors),
    --history the ids given. --user, --history and --items-file rank exactly in torch (Recommender.recommend_many,
    ties in item id order), so --user X lists what --history lists for X's sequence. --all, the batch path,
    searches the workspace's FAISS index (artifacts/index: what an approximate `index.factory` speeds up) with the
    encoded vectors when that index was built from the model's item vectors and no items were added to it;
    otherwise an exact index over the reloaded model's item vectors (molar_core.recommend orders what either
    finds by the exact score). With --items-file, --all ranks exactly too: the index holds every item."""
    from rich.console import Console

    from molar_core.io import atomic_path
    from molar_core.recommend import recommend as top_k
    from molar_core.recommend import recommendations_table
    from pipeline.readers import full_sequences
    from pipeline.workspace import candidate_items, model_index, open_recommender, user_rows

    try:
        if (user is not None) + all_users + (history is not None) != 1:
            raise MolarError("give exactly one of --user ID, --all or --history IDS")
        if all_users and out is None:
            raise MolarError("--all needs --out FILE (.parquet or .csv)")
        if out is not None and out.suffix not in (".parquet", ".csv"):
            raise MolarError(f"--out {out}: use a .parquet or .csv file name")
        ids = _history_ids(history) if history is not None else None
        rec, items, test = open_recommender(root, model, checkpoint, prepared, embeddings, with_users=ids is None)
        candidates = candidate_items(items_file, rec) if items_file is not None else None
        if rec.num_items > rec.num_trained_items:
            items = _with_added_titles(items, rec.checkpoint.path)
        exact = "exact ranking of the reloaded model" + (
            "" if candidates is None else f" over the {len(candidates):,} items of {items_file}")
        if ids is not None:
            try:
                top = rec.recommend(ids, k, exclude_seen=not include_seen, candidates=candidates)
            except ValueError as err:
                raise MolarError(f"--history: {err}") from None
            table = _history_table(top, items)
            seen_count, what, source = 0 if include_seen else len(set(ids)), f"a history of {len(ids)} items", exact
        else:
            prep = prepared or root / paths.PREPARED  # as open_recommender resolved it
            rows = user_rows(test, user, prep) if user is not None else test
            sequences = full_sequences(rows)
            try:
                if all_users and candidates is None:
                    item_vectors = rec.item_vectors().numpy()
                    index, source = model_index(root, rec.checkpoint, item_vectors)
                    found, scores = top_k(index, rec.user_vectors(sequences).numpy(), item_vectors,
                                          None if include_seen else sequences, k)
                else:
                    found, scores = _top_arrays(rec.recommend_many(sequences, k, not include_seen, candidates), k)
                    source = exact
            except ValueError as err:  # a user's sequence holds an item the model has no vector of
                raise MolarError(f"{prep / 'test.parquet'}: {err}") from None
            table = recommendations_table(rows, found, scores, items)
            seen_count, what = 0 if include_seen else len(set(sequences[0])), f"user {user}"
    except MolarError as err:
        _fail(err)
    if out is not None:
        with atomic_path(out) as tmp:
            table.write_parquet(tmp) if out.suffix == ".parquet" else table.write_csv(tmp)
        count = f"{rows.height:,} users x top-{k}" if all_users else f"top-{k} for {what}"
        typer.echo(f"recommend: {table.height:,} rows ({count}) from {rec.checkpoint.path} via {source} -> {out}")
        return
    t = Table("rank", "item_id", "title", "score",
              title=f"{rec.name}: top-{k} for {what} ({seen_count} seen items excluded)")
    for r in table.iter_rows(named=True):
        t.add_row(str(r["rank"]), str(r["item_id"]), r["title"] or "", f"{r['score']:.4f}")
    Console().print(t)


def _history_ids(text: str) -> list[int]:
    """--history 12,55,301 -> [12, 55, 301], or an error quoting the part that is not an item id."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in parts if not x.lstrip("-").isdigit()]
    if bad or not parts:
        raise MolarError(f"--history {text!r}: give prepared item ids separated by commas, e.g. 12,55,301"
                         + (f" ({bad[0]!r} is not an id)" if bad else ""))
    return [int(x) for x in parts]


def _top_arrays(tops: list[list[tuple[int, float]]], k: int):
    """Recommender rankings as the (item ids, scores) arrays (U, k) of molar_core.recommend: id 0 with score -inf
    where fewer than k items remain."""
    import numpy as np

    ids, scores = np.zeros((len(tops), k), dtype=np.int64), np.full((len(tops), k), -np.inf, dtype=np.float32)
    for r, top in enumerate(tops):
        ids[r, :len(top)] = [i for i, _ in top]
        scores[r, :len(top)] = [v for _, v in top]
    return ids, scores


def _history_table(top: list[tuple[int, float]], items):
    """rank/item_id/score/raw_item_id/title of one ranking (an ad-hoc history has no user columns)."""
    import polars as pl

    table = pl.DataFrame({"rank": list(range(1, len(top) + 1)), "item_id": [i for i, _ in top],
                          "score": [s for _, s in top]}, schema={"rank": pl.Int32, "item_id": pl.Int32,
                                                                 "score": pl.Float32})
    return table.join(items.select("item_id", "raw_item_id", "title"), on="item_id", how="left",
                      maintain_order="left")


def _with_added_titles(items, model_dir: Path):
    """The prepared items' ids, raw ids and titles, then those of the items added to the model in model_dir."""
    import polars as pl

    from molar_core.added_items import added_items_dir, read_added_items

    added = read_added_items(added_items_dir(model_dir)).items
    columns = ["item_id", "raw_item_id", "title"]
    return pl.concat([items.select(columns), added.select(columns)])


@app.command("add-items")
def add_items(items_file: Path = typer.Argument(None, help="new items (.csv, .tsv, .parquet, .jsonl): raw_item_id, "
                                                "and title, text, other text columns, image as in README; left "
                                                "out: recompute the vectors of the items added before"),
              model: str = typer.Option("molar", "--model", "-m", help="a content model of the workspace (content, "
                                        "molar, hybrid: not sasrec)"),
              params: Path = typer.Option(None, "--params", "-p", help="params file (default ROOT/params.yaml): its "
                                          "embed settings encode the items"),
              root: Path = typer.Option(Path("."), help="workspace (the directory of dvc.yaml)")) -> None:
    """Add items to a trained content model without retraining: embed their new contents, make their item
    vectors with the model's adapter, write artifacts/added-items/MODEL/ (then `molar recommend` ranks them)."""
    from pipeline.add_items import run
    from pipeline.console import console

    try:
        p = load_params(params if params is not None else root / "params.yaml")
        done = run(root, model, items_file, p,
                   log=lambda msg: console.print(f"add-items: {msg}", markup=False, highlight=False))
    except MolarError as err:
        _fail(err)
    missing = sum(done["images_missing"].values())
    first, last = done["item_ids"]
    typer.echo(f"add-items: {done['added']:,} items added to {model} ({done['embedded']:,} encoded, "
               f"{done['reused']:,} read from the caches" + (f", {missing:,} without an image" if missing else "")
               + f"); {done['total']:,} added items in all, ids {first}..{last}, vectors by the current model "
               f"-> {done['path']}")


@app.command()
def report(out: Path = typer.Option(paths.REPORT, help="HTML file to write"),
           users: int = typer.Option(6, min=0, help="sample users in the gallery"),
           seed: int = typer.Option(0, help="which users are sampled"),
           screenshot: Path = typer.Option(None, help="also render the page in headless Chromium to this PNG"),
           root: Path = typer.Option(Path("."), help="workspace (the directory of dvc.yaml)")) -> None:
    """One self-contained HTML page: stats, metrics with CIs, curves, breakdowns, and a poster gallery."""
    from molar_core.io import write_bytes_atomic
    from pipeline.report import build_report

    try:
        page = build_report(root, users, seed)
        target = out if out.is_absolute() else root / out
        write_bytes_atomic(target, page.encode())
        typer.echo(f"report: {target} ({len(page) / 1e3:,.0f} kB)")
        if screenshot is not None:
            from pipeline.browser import render

            result = render(target, screenshot)
            typer.echo(f"report: screenshot {screenshot} ({result.images} images, "
                       f"{len(result.console_errors)} console errors)")
    except MolarError as err:
        _fail(err)


@app.command("check-params")
def check_params(params: Path = PARAMS) -> None:
    """Validate params.yaml and print the resolved values."""
    try:
        p = load_params(params)
    except MolarError as err:
        _fail(err)
    typer.echo(json.dumps(p.model_dump(), indent=2))


@app.command("config-reference")
def config_reference(out: Path = typer.Option(Path("docs/configuration.md"), help="markdown file to write")) -> None:
    """Write the reference of every params key (type, default, meaning), generated from the schema."""
    from molar_core.io import write_bytes_atomic
    from pipeline.config_reference import render

    page = render()
    try:
        write_bytes_atomic(out, page.encode())
    except MolarError as err:
        _fail(err)
    keys = page.count("\n| `")  # one table row per key
    typer.echo(f"config-reference: {out} ({keys} keys)")


@inspect_app.command("prepared")
def inspect_prepared(user: str = typer.Option(None, help="raw user id: print their sequence with titles"),
                     root: Path = Path(".")) -> None:
    """Dataset stats, or one user's sequence."""
    import polars as pl
    from rich.console import Console

    from pipeline.readers import read_prepared, read_stats

    try:
        stats = read_stats(root)
        if user is None:
            Console().print_json(json.dumps({k: v for k, v in stats.items() if k not in ("params", "runtime")}))
            return
        test, items = read_prepared(root, "test"), read_prepared(root, "items")
        row = test.filter(pl.col("raw_user_id") == user)
        if row.height == 0:
            raise MolarError(f"unknown user id {user!r} (raw ids as in the source data; see {paths.TEST})")
        seq = row["history"][0].to_list() + [row["target"][0]]
        titles = dict(zip(items["item_id"].to_list(), items["title"].to_list()))
        t = Table("pos", "item_id", "title", "split")
        for i, it in enumerate(seq):
            split = "test" if i == len(seq) - 1 else "valid" if i == len(seq) - 2 else "train"
            t.add_row(str(i), str(it), titles.get(it, "?"), split)
        Console().print(t)
    except MolarError as err:
        _fail(err)


@inspect_app.command("checkpoint")
def inspect_checkpoint(model: str = typer.Argument("sasrec", help="model name, or a model directory"),
                       root: Path = Path(".")) -> None:
    """A model's config (format, data it was trained on, params, best epoch) and parameter count."""
    from rich.console import Console

    from molar_core.vectors import load_tensors
    from pipeline.workspace import open_model

    try:
        as_dir = Path(model)
        ckpt = open_model(root, checkpoint=as_dir) if as_dir.is_dir() and "/" in model else open_model(root, model)
        state = load_tensors(ckpt.path / "model.safetensors", ckpt.rebuild)
        cfg = {**ckpt.config, "parameters": int(sum(v.numel() for v in state.values()))}
        Console().print_json(json.dumps(cfg))
    except MolarError as err:
        _fail(err)


@inspect_app.command("embeddings")
def inspect_embeddings(title: str = typer.Option(None, help="nearest neighbours of the item whose title contains this"),
                       k: int = typer.Option(10, help="neighbours to show"), root: Path = Path(".")) -> None:
    """The embedding cache: manifest summary, coverage of items.parquet, an item's nearest neighbours (cosine)."""
    import polars as pl
    import torch
    from rich.console import Console

    from molar_core.store import lookup_vectors, open_manifest
    from pipeline.readers import read_prepared

    out = Console()
    store = root / paths.EMBEDDINGS
    try:
        m = open_manifest(store)
        s = m.settings
        out.print(f"[bold]{store}[/]: encoder {s.get('encoder')}, dim {m.dim}, pooling {s.get('pooling')}, "
                  f"normalize {s.get('normalize')}, dtype {s.get('dtype')}, backend {s.get('backend')}")
        out.print(f"settings_hash {m.settings_hash}, model fingerprint {str(s.get('model_fingerprint'))[:16]}...")
        out.print(f"{len(m.shards)} shards, {m.stored:,} vectors stored "
                  f"({sum(e.bytes for e in m.shards) / 1e6:.1f} MB)")
        items = read_prepared(root, "items").sort("item_id")
        vecs, found = lookup_vectors(store, items["content_hash"].to_list(), m)
        n_found = int(found.sum())
        out.print(f"coverage: {n_found:,} / {items.height:,} items of {paths.ITEMS} have a vector "
                  f"({n_found / max(items.height, 1):.1%})" + ("" if n_found == items.height
                                                               else "  (run `dvc repro embed`)"))
        if title is None:
            return
        hits = items.filter(pl.col("title").str.to_lowercase().str.contains(title.lower(), literal=True))
        if hits.height == 0:
            raise MolarError(f"no item title contains {title!r}")
        ids, titles = items["item_id"].to_list(), items["title"].to_list()
        row = ids.index(int(hits["item_id"][0]))
        if hits.height > 1:
            out.print(f"{hits.height} titles match; using the first: {hits['title'][0]!r}")
        if not bool(found[row]):
            raise MolarError(f"item {hits['item_id'][0]} {hits['title'][0]!r} has no vector (run `dvc repro embed`)")
        unit = torch.nn.functional.normalize(vecs, dim=1)
        sims = unit @ unit[row]
        sims[~found] = -float("inf")
        sims[row] = -float("inf")
        top = torch.topk(sims, min(k, int(found.sum()) - 1))
        t = Table("rank", "item_id", "title", "cosine", title=f"nearest to {hits['title'][0]!r}")
        for rank, (score, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
            t.add_row(str(rank), str(ids[i]), titles[i], f"{score:.3f}")
        out.print(t)
    except MolarError as err:
        _fail(err)

@inspect_app.command("index")
def inspect_index(model: str = typer.Argument("sasrec"), sample: int = typer.Option(1000, help="users to sample"),
                  k: int = typer.Option(10, "--k", "-k", help="recall@k against exact search"),
                  root: Path = Path(".")) -> None:
    """A model's FAISS index: type, size, and its recall@k against exact search on a sample of test users (their
    test histories encoded by the reloaded model, molar_core.load)."""
    import numpy as np
    from rich.console import Console

    from molar_core.index import load_index, recall_vs_exact
    from molar_core.recommender import load
    from pipeline.readers import read_prepared

    path = root / paths.INDEX_DIR / f"{model}.faiss"
    try:
        if not path.exists():
            raise ArtifactError(str(path), "not found", "dvc repro index")
        rec = load(root / paths.model_dir(model), rebuild=paths.producer(model), added_items=False)
        index = load_index(path, use_gpu="never")
        histories = read_prepared(root, "test")["history"].to_list()
        rows = np.random.default_rng(0).choice(len(histories), size=min(sample, len(histories)), replace=False)
        users = rec.user_vectors([histories[r] for r in np.sort(rows)]).numpy()
        recall = recall_vs_exact(index, rec.item_vectors().numpy(), users, k)
    except MolarError as err:
        _fail(err)
    info_path = path.with_suffix(".json")
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    t = Table("field", "value", title=str(path))
    for key, value in [("type", type(index).__name__), ("factory", info.get("factory", "?")),
                       ("vectors", f"{index.ntotal:,} x {index.d}"), ("file size", f"{path.stat().st_size / 1e6:.2f} MB"),
                       ("built on GPU", str(info.get("built_on_gpu", "?"))),
                       (f"recall@{k} vs exact", f"{recall:.4f} ({len(rows):,} test users)")]:
        t.add_row(key, value)
    Console().print(t)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
