"""The paper's central claim, measured: its relative NDCG@10 gains (post-alignment; Molar over SASRec) beside the
same comparisons here, each with its paired bootstrap interval over users and a verdict read off that interval.

Make one sweep folder per dataset (from the repo root; without --workspace the sweep prepares and embeds the
dataset once in OUT/base; one torch thread per process, --jobs processes at a time; the patience settings in
brackets are optional, the params files' own patience is 10), then the table:

    python -m bench.sweep --out /tmp/paper-ml100k --seeds 0 1 2 --jobs 2 \
        --set prepare.source=recbole_atomic prepare.path=../shared/datasets/ml-100k \
              train_id.threads=1 train.threads=1 [train_id.patience=20 train.patience=20] \
        --variants content molar molar_direct molar_joint content_bce molar_bce \
        --pairs molar:content molar_direct:content molar_joint:content molar_bce:content_bce
    python -m bench.sweep --out /tmp/paper-amazon --config bench/configs/amazon_scientific.yaml --seeds 0 1 2 --jobs 2 \
        --set train_id.threads=1 train.threads=1 [train_id.patience=20 train.patience=20] \
        --variants content molar molar_direct molar_joint content_bce molar_bce \
        --pairs molar:content molar_direct:content molar_joint:content molar_bce:content_bce
    python -m bench.paper_table --sweep ML-100K=/tmp/paper-ml100k Amazon-Scientific=/tmp/paper-amazon \
        --out /tmp/paper-table

It prints the markdown table and writes OUT/paper_table.md and OUT/paper_table.json (every number, the folders,
seeds, arms, commit, date and machine; --json PATH writes the same there too). A pair that the folders hold over
fewer than --min-seeds seeds (default 3; an arm still training) gets no row; the table names it instead. The
text-plus-image and stage-1 rows are measured only from bench/finetune_ablation.py folders given with
`--ablation LABEL=DIR` (its Molar models, same seeds and users per pair); a sweep's models all share one item
embedding, so they cannot measure either.

Every measured number comes from the folders' per-user test NDCG@10 (a sweep's results/MODEL.json, an
ablation's metrics/per_user.parquet): the difference A − B over users, seeds pooled, with its paired bootstrap
95% interval (bench/sweep.py's paired_gain), relative = that difference over B's pooled mean. "replicates?" reads
the interval of the difference: "yes" entirely on the paper's side of 0, "no" entirely on the other side,
"not resolved" if it contains 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from bench.common import add_json_option
from bench.machine import checkout, describe, hardware_notes
from bench.sweep import VARIANTS, compare, load_runs, paired_gain

# The paper's test NDCG@10 (arXiv 2412.18176, full ranking, leave-one-out), as ../shared/docs/molar-method.md
# quotes them: Table 2 is the main comparison with the baselines, Table 5 the ablations on PixelRec.
# Each claim: (dataset, the compared model's NDCG@10, the baseline's).
PAPER = {
    "alignment": {"title": "post-alignment: Molar vs the same model without alignment", "table": "Table 5",
                  "numbers": [("PixelRec", 0.0197, 0.0182)]},
    "vs_sasrec": {"title": "Molar vs SASRec", "table": "Table 2",
                  "numbers": [("MovieLens-1M", 0.1768, 0.1116), ("PixelRec", 0.0197, 0.0131),
                              ("Amazon clothing", 0.1407, 0.1080)]},
    "content_vs_sasrec": {"title": "without alignment vs SASRec", "table": "Tables 2 and 5",
                          "numbers": [("PixelRec", 0.0182, 0.0131)]},
    "image": {"title": "text and image vs text only", "table": "Table 5", "numbers": [("PixelRec", 0.0197, 0.0181)]},
    "stage1": {"title": "stage-1 fine-tuning vs none", "table": "Table 5", "numbers": [("PixelRec", 0.0197, 0.0180)]},
}
# the comparisons here that measure each claim: sweep models (A, B), A − B; the BCE arms use the paper text's loss
SWEEP_PAIRS = {
    "alignment": [("molar", "content"), ("molar_direct", "content"), ("molar_joint", "content"),
                  ("molar_bce", "content_bce")],
    "vs_sasrec": [("molar", "sasrec"), ("molar_direct", "sasrec"), ("molar_joint", "sasrec"),
                  ("molar_bce", "sasrec")],
    "content_vs_sasrec": [("content", "sasrec"), ("content_bce", "sasrec")],
}
SWEEP_MODELS = {m for pairs in SWEEP_PAIRS.values() for pair in pairs for m in pair}
# bench/finetune_ablation.py arms (A, B), compared on their Molar models
ABLATION_PAIRS = {
    "image": [("image_stage1", "text_stage1"), ("image_no_stage1", "text_no_stage1")],
    "stage1": [("image_stage1", "image_no_stage1"), ("text_stage1", "text_no_stage1")],
}
ABLATION_MODEL = "molar"
NOT_MEASURED = "not measured (no image / stage-1 run in these folders)"


def verdict(low: float, high: float, paper_sign: float) -> str:
    """The interval of the difference against the paper's sign: on its side, on the other, or containing 0."""
    lo, hi = sorted((low * paper_sign, high * paper_sign))
    return "yes" if lo > 0 else "no" if hi < 0 else "not resolved"


def ablation_per_user(folder: Path, arm: str) -> dict[int, np.ndarray]:
    """seed -> the ablation arm's Molar test NDCG@10 per user (sorted by user id, as finetune_ablation pairs them)."""
    out = {}
    for f in sorted(folder.glob(f"seed*/{arm}/metrics/per_user.parquet")):
        pu = pl.read_parquet(f).filter((pl.col("split") == "test") & (pl.col("model") == ABLATION_MODEL))
        out[int(f.parents[2].name.removeprefix("seed"))] = pu.sort("user_id")["ndcg@10"].to_numpy()
    return dict(sorted(out.items()))


def sweep_conditions(folder: Path, by_seed: dict[int, dict[str, dict]]) -> dict:
    """What the sweep's runs record about themselves: seeds, models, machines and commits, and the settings that
    decide what "SASRec" and "content" mean there (train_id.loss, the item encoder)."""
    runs = [r for runs in by_seed.values() for r in runs.values()]
    settings = {}
    for p in sorted(folder.glob("seed*/params.yaml"))[:1]:
        params = yaml.safe_load(p.read_text())
        settings = {"train_id.loss": params.get("train_id", {}).get("loss"),
                    "embed.encoder": params.get("embed", {}).get("encoder"),
                    "embed.model": params.get("embed", {}).get("model")}

    def distinct(key: str) -> list:  # results written before a key was recorded lack it
        return [json.loads(v) for v in sorted({json.dumps(r[key], sort_keys=True) for r in runs if key in r})]

    return {"seeds": list(by_seed), "models": sorted({r["model"] for r in runs}), "settings": settings,
            "machines": distinct("machine"), "commits": distinct("commit")}


def measure(sweeps: dict[str, Path], ablations: dict[str, Path], min_seeds: int = 1) -> tuple[list[dict], dict]:
    """The table's rows (one per claim, dataset and compared pair that the folders hold over at least `min_seeds`
    seeds, one "not measured" row for a claim none of them holds) and each folder's conditions, with the pairs
    left out for fewer seeds (arms still training) under "fewer_seeds"."""
    rows, folders = [], {}
    loaded = {}
    for label, folder in sweeps.items():
        loaded[label] = load_runs([folder])
        if not loaded[label]:
            raise FileNotFoundError(f"{label}: no seed*/results/*.json under {folder}")
        folders[label] = {"path": str(folder), "kind": "sweep", **sweep_conditions(folder, loaded[label])}
    for label, folder in ablations.items():
        arms = {arm: ablation_per_user(folder, arm) for pairs in ABLATION_PAIRS.values() for p in pairs for arm in p}
        folders[f"{label} (ablation)"] = {"path": str(folder), "kind": "finetune_ablation",
                                          "seeds": sorted({s for a in arms.values() for s in a}),
                                          "arms": sorted(a for a, runs in arms.items() if runs)}
        loaded[f"{label} (ablation)"] = arms
    for claim, paper in PAPER.items():
        signs = {float(np.sign(a - b)) for _, a, b in paper["numbers"]}
        assert len(signs) == 1, claim  # one direction per claim, so one verdict reads all its numbers
        sign = signs.pop()
        head = {"claim": claim, "title": paper["title"], "paper_table": paper["table"],
                "paper": [{"dataset": d, "a": a, "b": b, "relative": (a - b) / b} for d, a, b in paper["numbers"]]}
        found = []

        def add(folder: str, a: str, b: str, got: dict | None, names: tuple[str, str]) -> None:
            if got is None:
                return
            if len(got["seeds"]) >= min_seeds:
                found.append({"here": folder, "a": names[0], "b": names[1], **got})
            else:
                folders[folder].setdefault("fewer_seeds", []).append(f"{a} − {b} (seeds {seed_list(got)})")

        for label in sweeps:
            for a, b in SWEEP_PAIRS.get(claim, []):
                add(label, a, b, compare(loaded[label], a, b), (a, b))
        for label in ablations:
            arms = loaded[f"{label} (ablation)"]
            for a, b in ABLATION_PAIRS.get(claim, []):
                add(f"{label} (ablation)", a, b, paired_gain(arms[a], arms[b]),
                    (f"{a}/{ABLATION_MODEL}", f"{b}/{ABLATION_MODEL}"))
        for f in found:
            f["replicates"] = verdict(f["ci_low"], f["ci_high"], sign)
        missing = NOT_MEASURED if claim in ABLATION_PAIRS else "not measured (no such models in these folders)"
        rows += [{**head, **f} for f in found] or [{**head, "here": None, "replicates": missing}]
    return rows, folders


def seed_list(record: dict) -> str:
    return " ".join(map(str, record["seeds"]))


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:+.1%}"


def markdown(rows: list[dict], meta: dict, title: bool = True) -> str:
    """The table with its conditions; title=False leaves out the heading and the line saying where it was made
    (docs/results.md renders it through bench.docs_tables, which writes that line itself)."""
    made, m = meta["made"], meta["made"]["machine"]
    lines = ["# The paper's central claim, measured", "",
             "Test NDCG@10, full ranking over every item, the user's history masked, leave-one-out. Paper: arXiv "
             "2412.18176 (Tables 2 and 5). Here: A − B over the same test users, seeds pooled, paired bootstrap "
             "95% interval; relative = over B's pooled mean.", "",
             f"Made {made['date']} at commit {made['commit']}{' (tracked files changed)' if made['dirty'] else ''}"
             f" on {m['cpu']} ({', '.join(hardware_notes(m))}).", ""]
    if not title:
        lines = lines[2:4]
    for label, f in meta["folders"].items():
        extra = ", ".join(f"{k} {v}" for k, v in f.get("settings", {}).items() if v is not None)
        trained = "; ".join(sorted({x["cpu"] + (f", {x['gpu']}" if "gpu" in x else "") for x in f.get("machines", [])}))
        lines.append(f"- {label}: `{f['path']}`, seeds {seed_list(f)}"
                     + (f", {extra}" if extra else "") + (f"; trained on {trained}" if trained else ""))
        if f.get("fewer_seeds"):
            lines.append(f"  - left out, fewer than {meta['min_seeds']} seeds so far: {'; '.join(f['fewer_seeds'])}")
    lines += ["", "| claim | paper: NDCG@10 A vs B (relative) | here: A − B | seeds | NDCG@10 here, A vs B "
              "(mean over seeds ± 95% t) | relative gain here [95% paired bootstrap] | replicates? |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    last = None
    for r in rows:
        paper = "; ".join(f"{p['dataset']} {p['a']:.4f} vs {p['b']:.4f} ({_pct(p['relative'])})" for p in r["paper"])
        first = r["claim"] != last
        last = r["claim"]
        claim_cells = f"| {r['title'] if first else ''} | {paper + ' (' + r['paper_table'] + ')' if first else ''} |"
        if r["here"] is None:
            lines.append(f"{claim_cells} | | | | {r['replicates']} |")
            continue
        rel = (f"{_pct(r['relative'])} [{_pct(r['relative_low'])}, {_pct(r['relative_high'])}]"
               if r["relative"] is not None else f"{r['diff']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]")
        lines.append(f"{claim_cells} {r['here']}: {r['a']} − {r['b']} | {seed_list(r)} | "
                     f"{r['t_a']} vs {r['t_b']} | {rel} | {r['replicates']} |")
    arms = [f"`{n}`: {', '.join(f'{k} {json.dumps(v)}' for k, v in VARIANTS[n].items())}"
            for n in dict.fromkeys(x for r in rows if r["here"] for x in (r["a"], r["b"])) if n in VARIANTS]
    lines += ["", "Arms (overrides of the `train` section): " + "; ".join(arms) + ". SASRec is `train_id`.",
              "The relative interval is the difference's interval over B's mean (taken as fixed); the verdict reads "
              "the difference's interval, so the division cannot change it."]
    return "\n".join(lines) + "\n"


def summary(result: dict) -> str:
    """The table's short form (README.md): a row per claim and compared pair, a column per folder (dataset), each
    cell the relative gain with its interval, the seed count and the verdict; a claim none of the folders
    measures gets one row saying so."""
    labels = list(dict.fromkeys(r["here"] for r in result["rows"] if r["here"] is not None))
    cells: dict[tuple, dict[str, str]] = {}
    for r in result["rows"]:
        key = (r["claim"], r.get("a"), r.get("b"))
        cells.setdefault(key, {})
        if r["here"] is not None:
            cells[key][r["here"]] = (f"{_pct(r['relative'])} [{_pct(r['relative_low'])}, {_pct(r['relative_high'])}]"
                                     f", {len(r['seeds'])} seed{'s' * (len(r['seeds']) != 1)}: {r['replicates']}")
    by_claim = {r["claim"]: r for r in result["rows"]}
    lines = ["| claim | paper: relative NDCG@10 gain | A − B | " + " | ".join(labels) + " |",
             "| --- | --- | --- |" + " --- |" * len(labels)]
    last = None
    for (claim, a, b), got in cells.items():
        r = by_claim[claim]
        title, paper = ("", "") if claim == last else (
            r["title"], "; ".join(f"{p['dataset']} {_pct(p['relative'])}" for p in r["paper"]))
        last = claim
        pair = f"{a} − {b}" if a is not None else r["replicates"]
        lines.append(f"| {title} | {paper} | {pair} | " + " | ".join(got.get(label, "") for label in labels) + " |")
    return "\n".join(lines) + "\n"


def labelled(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not (sep and label and path):
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=DIR")
    return label, Path(path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", nargs="+", type=labelled, required=True, metavar="LABEL=DIR",
                    help="bench/sweep.py output folders, one per dataset")
    ap.add_argument("--ablation", nargs="*", type=labelled, default=[], metavar="LABEL=DIR",
                    help="bench/finetune_ablation.py output folders (the image and stage-1 rows)")
    ap.add_argument("--out", type=Path, required=True, help="writes paper_table.json and paper_table.md here")
    ap.add_argument("--min-seeds", type=int, default=3,
                    help="a pair compared over fewer seeds (an arm still training) is left out, and named")
    add_json_option(ap, "paper_table.json (every number, the machine and commit)")
    args = ap.parse_args(argv)
    rows, folders = measure(dict(args.sweep), dict(args.ablation), args.min_seeds)
    meta = {"made": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **checkout(),
                     "machine": describe(), "command": ["python", "-m", "bench.paper_table",
                                                          *(argv or sys.argv[1:])]},
            "folders": folders, "min_seeds": args.min_seeds,
            "arms": {n: VARIANTS[n] for n in sorted(SWEEP_MODELS & set(VARIANTS))}}
    text = markdown(rows, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {**meta, "metric": "test ndcg@10", "rows": rows}
    for path in (args.out / "paper_table.json", *([args.json] if args.json else [])):
        path.write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "paper_table.md").write_text(text)
    print(text, end="")
    return result


if __name__ == "__main__":
    main()
