"""How each stage's wall time and peak memory grow with the catalogue: 1e4, 1e5 and 1e6 items, 1e5 users.

    python -m bench.scale [--items 10000 100000 1000000] [--users 100000] [--threads 1] [--out /tmp/molar-scale]
    python -m bench.scale --out /tmp/molar-scale --report [--json scale.json]  # the table of what has run
    python -m bench.scale --items 1000000 --stages embed --redo embed   # measure one stage again
    python -m bench.scale --items 1000000 --stages prepare train_id --set train_id.sparse_item_updates=true \
        --out /tmp/molar-scale-sparse                                     # a setting beside SCALE's, own folder

Each size gets a workspace OUT/N holding the synthetic tables of `molar_core.data.synthetic.interaction_tables`
(`prepare.source: table`) and a params.yaml: the repository's params.yaml with the large-catalogue settings in
SCALE (sampled softmax for SASRec and sampled negatives for the content model, one epoch each, and as item
encoder a tiny random BERT with MiniLM's tokenizer, so the real embed stage runs over every item in minutes).
Every stage runs as `python -m stages.X` in its own process, the command `dvc repro` runs, and the table gives
its wall time and the peak resident memory of that process (os.wait4), with the growth from the smallest size.
Finished stages are kept in OUT/N/scale.json and skipped on a rerun.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

from bench.common import PARAMS, add_json_option, markdown_table, write_result
from bench.stage_process import run_stage
from molar_core.data.synthetic import interaction_tables
from molar_core.encoders.tiny import build_tiny_sentence_encoder
from molar_core.io import read_json, write_json_atomic
from pipeline.params import deep_merge, dotted_overrides, load_params

MODELS = ["sasrec", "molar"]
STAGES = [("prepare", []), ("embed", []), ("train_id", []), ("train@molar", ["molar"]), ("index", []),
          ("evaluate", [])]


def scale_overrides(threads: int, encoder_dir: Path) -> dict:
    """What differs from params.yaml for a large catalogue (README, Performance)."""
    table = {"interactions": "raw/interactions.parquet", "items": "raw/items.parquet", "item_key_col": "item_id",
             "title_col": "title", "text_cols": ["description"]}
    return {
        "prepare": {"source": "table", "path": None, "table": table},
        "embed": {"encoder": "sentence", "model": str(encoder_dir), "threads": threads, "batch_size": 256},
        "train_id": {"loss": "sampled_softmax", "num_negatives": 256, "max_epochs": 1, "threads": threads},
        "train": {"num_negatives": 256, "max_epochs": 1, "threads": threads},
        "train_variants": {"molar": {"align_alpha": 0.5}},
        "index": {"models": MODELS}, "evaluate": {"models": MODELS},
    }


def write_workspace(ws: Path, items: int, users: int, threads: int, seed: int, extra: dict | None = None) -> None:
    """Synthetic tables and a validated params.yaml (an error here names the key before any stage runs)."""
    raw = ws / "raw"
    if not (raw / "items.parquet").exists():
        raw.mkdir(parents=True, exist_ok=True)
        inter, cat = interaction_tables(users, items, seed=seed)
        inter.write_parquet(raw / "interactions.parquet")
        cat.write_parquet(raw / "items.parquet")
    encoder = ws.parent / "tiny-bert"
    if not (encoder / "config.json").exists():
        build_tiny_sentence_encoder(encoder)
    over = deep_merge(scale_overrides(threads, encoder.resolve()), extra or {})
    params = load_params(PARAMS, overrides=over)
    (ws / "params.yaml").write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))


def run_size(out: Path, items: int, users: int, threads: int, seed: int, only: list[str] | None = None,
             redo: list[str] = (), extra: dict | None = None) -> None:
    """Run the stages of one size that have no record yet (`only`: just these; `redo`: measure these again,
    from a cold start: a redone embed starts from an empty cache)."""
    ws = out / str(items)
    ws.mkdir(parents=True, exist_ok=True)
    write_workspace(ws, items, users, threads, seed, extra)
    record = ws / "scale.json"
    done = read_json(record) if record.exists() else {}
    for stage in redo:
        done.pop(stage, None)
        if stage == "embed":
            shutil.rmtree(ws / "artifacts" / "embeddings", ignore_errors=True)
    for stage, args in STAGES:
        if stage in done or (only and stage not in only):
            continue
        done[stage] = run_stage(ws, [f"stages.{stage.split('@')[0]}", *args], ws / "stages.log")
        write_json_atomic(record, done)
        print(f"{items:>9,} items  {stage:<12} {done[stage]['seconds']:>8.1f} s  "
              f"{done[stage]['peak_rss_mib']:>8.0f} MiB", flush=True)


def table(runs: dict[int, dict]) -> list[dict]:
    """Per stage: its record at each size, and its growth from the smallest size to the largest."""
    sizes = sorted(runs)
    first, last = sizes[0], sizes[-1]
    out = []
    for stage, _ in STAGES:
        growth = None
        if all(stage in runs[n] for n in (first, last)):
            a, b = runs[first][stage], runs[last][stage]
            growth = {"seconds": b["seconds"] / a["seconds"], "peak_rss_mib": b["peak_rss_mib"] / a["peak_rss_mib"]}
        out.append({"stage": stage, "by_items": {str(n): runs[n].get(stage) for n in sizes},
                    "growth_first_to_last": growth})
    return out


def markdown(result: dict) -> str:
    """The dataset line of each size and the stages' seconds and peak memory (what the script prints, and what
    docs/performance.md renders from bench/results/scale.json)."""
    sizes = [str(n) for n in result["sizes"]]
    lines = [f"- {int(n):,} items: {s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions"
             for n, s in result["stats"].items()]
    header = ["stage"] + [f"{int(n):,} items: {what}" for n in sizes for what in ("s", "peak MiB")]
    header += [f"time {int(sizes[0]):,} -> {int(sizes[-1]):,}", f"memory {int(sizes[0]):,} -> {int(sizes[-1]):,}"]
    rows = []
    for t in result["stages"]:
        cells = [t["stage"]]
        for n in sizes:
            r = t["by_items"].get(n)
            cells += [f"{r['seconds']:,.1f}", f"{r['peak_rss_mib']:,.0f}"] if r else ["", ""]
        g = t["growth_first_to_last"]
        cells += [f"{g['seconds']:.1f}x", f"{g['peak_rss_mib']:.1f}x"] if g else ["", ""]
        rows.append(cells)
    return "\n".join(lines) + "\n\n" + markdown_table(header, rows) + "\n"


def report(out: Path, json_out: Path | None = None) -> dict:
    sizes = sorted(int(p.name) for p in out.iterdir() if p.name.isdigit() and (p / "scale.json").exists())
    if not sizes:
        raise SystemExit(f"nothing has run under {out}")
    runs = {n: read_json(out / str(n) / "scale.json") for n in sizes}
    stats = {str(n): read_json(out / str(n) / "data/prepared/stats.json") for n in sizes
             if (out / str(n) / "data/prepared/stats.json").exists()}
    result = {"folder": str(out), "sizes": sizes, "stats": stats, "stages": table(runs)}
    print(markdown(result))
    if json_out is not None:
        write_result(json_out, result)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/molar-scale"))
    ap.add_argument("--report", action="store_true", help="only print the table of what has run")
    names = [s for s, _ in STAGES]
    ap.add_argument("--stages", nargs="+", choices=names, help="run only these stages (default: all)")
    ap.add_argument("--redo", nargs="+", choices=names, default=[], help="measure these again (embed: cold cache)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                    help="params on top of the large-catalogue settings (use another --out)")
    add_json_option(ap)
    args = ap.parse_args()
    if not args.report:
        for n in args.items:
            run_size(args.out, n, args.users, args.threads, args.seed, args.stages, args.redo,
                     dotted_overrides(args.set))
    report(args.out, args.json)


if __name__ == "__main__":
    main()
