"""`molar`: run stages, check params, and inspect artifacts from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer
from rich.table import Table

from molar_core.errors import MolarError
from pipeline import paths
from pipeline.params import load_params

app = typer.Typer(help="molar: multimodal sequential recommendation (Molar) as a DVC pipeline.",
                  no_args_is_help=True, add_completion=False)
inspect_app = typer.Typer(help="Look inside artifacts.", no_args_is_help=True)
app.add_typer(inspect_app, name="inspect")

PARAMS = typer.Option(Path("params.yaml"), "--params", "-p", help="params file")


def _fail(err: Exception) -> None:
    from rich.markup import escape

    from stages.common import console

    console.print(f"[bold red]error[/]: {escape(str(err))}")
    raise typer.Exit(1)


def _stage(name: str, params: Path) -> None:
    try:
        p = load_params(params)
        if name == "prepare":
            from stages import prepare
            prepare.run(p.prepare)
        elif name == "train_id":
            from stages import train_id
            train_id.run(p.train_id, p.protocol)
        elif name == "embed":
            from stages import embed
            embed.run(p.embed)
        elif name == "index":
            from stages import index
            index.run(p.index)
        elif name == "evaluate":
            from stages import evaluate
            evaluate.run(p.evaluate, p.protocol)
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


@app.command("check-params")
def check_params(params: Path = PARAMS) -> None:
    """Validate params.yaml and print the resolved values."""
    try:
        p = load_params(params)
    except MolarError as err:
        _fail(err)
    typer.echo(json.dumps(p.model_dump(), indent=2))


@inspect_app.command("prepared")
def inspect_prepared(user: str = typer.Option(None, help="raw user id: print their sequence with titles"),
                     root: Path = Path(".")) -> None:
    """Dataset stats, or one user's sequence."""
    import polars as pl
    from rich.console import Console

    from stages.common import read_prepared, read_stats

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
def inspect_checkpoint(model: str = typer.Argument("sasrec"), root: Path = Path(".")) -> None:
    """A model's config and parameter count."""
    from rich.console import Console

    from molar_core.vectors import load_tensors

    d = root / paths.model_dir(model)
    try:
        cfg_path = d / "config.json"
        if not cfg_path.exists():
            raise MolarError(f"{cfg_path}: not found (run `dvc repro train_id`)")
        cfg = json.loads(cfg_path.read_text())
        state = load_tensors(d / "model.safetensors", "dvc repro train_id")
        cfg["parameters"] = int(sum(v.numel() for v in state.values()))
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
    from stages.common import read_prepared

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

def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
