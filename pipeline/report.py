"""`molar report`: one self-contained HTML page of a workspace's results (no network, no external files).

Sections: dataset stats, the metrics table of every model with 95% confidence intervals and the paired difference
to SASRec, training curves, test NDCG@10 by history length and by the test item's popularity, and a gallery of
sample users (their last items, then each model's top-10 on the test split with the held-out item marked: the model
reloaded by molar_core.load encodes the user's test history and ranks the trained items exactly, as `evaluate`
does).
Charts are inline SVG (matplotlib), posters inline JPEG thumbnails.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from pathlib import Path

import numpy as np
import polars as pl

from molar_core.errors import ArtifactError
from molar_core.io import read_json
from molar_core.popularity import NAME as POPULARITY
from molar_core.recommender import load
from pipeline import paths
from pipeline.readers import read_prepared, read_stats

NON_MODEL_KEYS = {"protocol", "runtime"}
THUMB_HEIGHT = 96

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;
padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} .muted{color:#777;font-size:.9em}
.charts{display:flex;flex-wrap:wrap;gap:1em} .charts figure{margin:0} .charts svg{max-width:580px;height:auto}
.user{border:1px solid #ddd;border-radius:6px;padding:.6em;margin:1em 0}
.row{display:flex;gap:6px;align-items:flex-start;margin:.3em 0;overflow-x:auto}
.row .label{min-width:90px;font-weight:600;font-size:.85em;padding-top:.3em}
.card{width:72px;font-size:.7em;text-align:center;flex:none}
.card img,.card .noimg{width:64px;height:96px;object-fit:cover;border:3px solid transparent;border-radius:3px}
.card .noimg{display:flex;align-items:center;justify-content:center;background:#eee;color:#999;margin:auto}
.card.hit img,.card.hit .noimg{border-color:#1a9c3e} .card.target img,.card.target .noimg{border-color:#e08a00}
.card .t{display:block;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
"""


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline SVG in HTML


def _figure(width: float = 6.0, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text as text: smaller, selectable
    return plt.subplots(figsize=(width, height))


def curves_chart(curves: dict[str, pl.DataFrame], metric: str) -> str:
    fig, ax = _figure()
    for name, curve in curves.items():
        if metric in curve.columns:
            ax.plot(curve["epoch"].to_list(), curve[metric].to_list(), label=name, marker=".", markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=.3)
    ax.legend()
    return _svg(fig)


def bucket_chart(table: pl.DataFrame, bucket: str, xlabel: str) -> str:
    """Grouped bars: one group per bucket (in file order), one bar per model, user counts under the labels."""
    fig, ax = _figure()
    order = table[bucket].unique(maintain_order=True).to_list()
    models = table["model"].unique(maintain_order=True).to_list()
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        sub = dict(zip(*table.filter(pl.col("model") == model).select(bucket, "ndcg@10").to_dict(as_series=False).values()))
        ax.bar(np.arange(len(order)) + i * width, [sub.get(b, 0.0) for b in order], width, label=model)
    users = dict(zip(*table.filter(pl.col("model") == models[0]).select(bucket, "users").to_dict(as_series=False).values()))
    ax.set_xticks(np.arange(len(order)) + 0.4 - width / 2, [f"{b}\n({users.get(b, 0)} users)" for b in order],
                  fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test NDCG@10")
    ax.grid(axis="y", alpha=.3)
    ax.legend()
    return _svg(fig)


def thumbnail(path: str | None) -> str | None:
    """A poster as an inline JPEG data URI (height THUMB_HEIGHT), or None when there is none or it is unreadable."""
    if not path or not Path(path).is_file():
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_HEIGHT * 2, THUMB_HEIGHT))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except (OSError, UnidentifiedImageError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(v: float) -> str:
    return f"{v:.4f}"


def metrics_table(metrics: dict, models: list[str]) -> str:
    ks = metrics["protocol"]["ks"]
    head = ["model", "test NDCG@10 [95% CI]", *[f"NDCG@{k}" for k in ks if k != 10],
            *[f"Recall@{k}" for k in ks], "MRR@10", "valid NDCG@10", "vs SASRec: ΔNDCG@10 [95% CI]"]
    rows = []
    for m in models:
        t, ci = metrics[m]["test"], metrics[m].get("test_ci95", {}).get("ndcg@10")
        cells = [f'<td class="l">{html.escape(m)}</td>',
                 f"<td>{_fmt(t['ndcg@10'])}" + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "") + "</td>",
                 *[f"<td>{_fmt(t[f'ndcg@{k}'])}</td>" for k in ks if k != 10],
                 *[f"<td>{_fmt(t[f'recall@{k}'])}</td>" for k in ks],
                 f"<td>{_fmt(t.get('mrr@10', float('nan')))}</td>", f"<td>{_fmt(metrics[m]['valid']['ndcg@10'])}</td>"]
        d = metrics[m].get("test_vs_sasrec", {}).get("ndcg@10")
        cells.append(f"<td>{d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]</td>" if d else "<td>—</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f'<th class="{"l" if h == "model" else ""}">{html.escape(h)}</th>' for h in head)
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def stats_table(stats: dict) -> str:
    q = stats.get("sequence_length", {})
    items = [("users", f"{stats['users']:,}"), ("items", f"{stats['items']:,}"),
             ("interactions", f"{stats['interactions']:,}"), ("density", f"{stats.get('density', 0):.4%}")]
    if q:
        items.append(("sequence length", ", ".join(f"{k} {v:,.0f}" for k, v in q.items())))
    if "images" in stats:
        im = stats["images"]
        items.append(("images", f"{im.get('items_with_image', 0):,} items ({im.get('item_coverage', 0):.1%}), "
                                f"{im.get('interaction_coverage', 0):.1%} of interactions"))
    rows = stats.get("rows", {})
    if rows:
        dropped = ", ".join(f"{k} {v:,}" for k, v in rows.get("dropped", {}).items() if v) or "none"
        items.append(("input rows", f"{rows.get('input', 0):,} (kept {rows.get('kept', 0):,}; dropped: {dropped})"))
    body = "".join(f'<tr><th class="l">{html.escape(k)}</th><td class="l">{html.escape(str(v))}</td></tr>'
                   for k, v in items)
    return f"<table>{body}</table>"


def _card(item_id: int, titles: dict, thumbs: dict, cls: str = "") -> str:
    title = html.escape(titles.get(item_id, str(item_id)))
    src = thumbs.get(item_id)
    pic = f'<img src="{src}" alt="{title}">' if src else '<div class="noimg">no image</div>'
    return f'<div class="card {cls}" title="{title}">{pic}<span class="t">{title}</span></div>'


def gallery(root: Path, models: list[str], masking: str, users: int, seed: int, last: int = 5) -> str:
    items, test = read_prepared(root, "items"), read_prepared(root, "test")
    rows = np.sort(np.random.default_rng(seed).choice(test.height, size=min(users, test.height), replace=False))
    sample = test[rows.tolist()]
    histories = sample["history"].to_list()
    tops = {}
    for m in models:  # exact top-10 of the reloaded model over the trained items, as evaluate ranks them
        rec = load(root / paths.model_dir(m), rebuild=paths.producer(m), added_items=False)
        tops[m] = [[i for i, _ in top] for top in rec.recommend_many(histories, 10, masking == "history")]
    shown = {i for h in histories for i in h[-last:]} | set(sample["target"].to_list())
    shown |= {i for top in tops.values() for ids in top for i in ids}
    info = items.filter(pl.col("item_id").is_in(sorted(shown)))
    titles = dict(zip(info["item_id"].to_list(), info["title"].to_list()))
    thumbs = {i: thumbnail(p) for i, p in zip(info["item_id"].to_list(), info["image_path"].to_list())}
    blocks = []
    for r, (user, hist, target) in enumerate(zip(sample["raw_user_id"].to_list(), histories,
                                                   sample["target"].to_list())):
        lines = [f'<div class="row"><span class="label">last {min(last, len(hist))} of {len(hist)}</span>'
                 + "".join(_card(i, titles, thumbs) for i in hist[-last:]) + "</div>",
                 '<div class="row"><span class="label">held out (test)</span>'
                 + _card(target, titles, thumbs, "target") + "</div>"]
        for m in models:
            ids = tops[m][r]
            hit = target in ids
            lines.append(f'<div class="row"><span class="label">{html.escape(m)}'
                         f'{" ✔ hit @" + str(ids.index(target) + 1) if hit else ""}</span>'
                         + "".join(_card(i, titles, thumbs, "hit" if i == target else "") for i in ids) + "</div>")
        blocks.append(f'<div class="user"><b>user {html.escape(str(user))}</b>{"".join(lines)}</div>')
    return "".join(blocks)


def build_report(root: Path, gallery_users: int = 6, seed: int = 0) -> str:
    """The report page of the workspace at `root`, as one HTML string."""
    stats = read_stats(root)
    metrics_path = root / paths.METRICS_DIR / "metrics.json"
    if not metrics_path.exists():
        raise ArtifactError(str(metrics_path), "not found", "dvc repro evaluate")
    metrics = read_json(metrics_path)
    models = [m for m in metrics if m not in NON_MODEL_KEYS]
    proto = metrics["protocol"]
    curves = {}
    sasrec_curve = root / paths.PLOTS_DIR / "train_id" / "curve.csv"
    if sasrec_curve.exists():
        curves["sasrec"] = pl.read_csv(sasrec_curve)
    for m in models:
        path = root / paths.PLOTS_DIR / "train" / f"{m}.csv"
        if path.exists():
            curves[m] = pl.read_csv(path)
    charts = []
    if curves:
        charts.append(("Validation NDCG@10 per epoch", curves_chart(curves, "valid_ndcg@10")))
        charts.append(("Training loss per epoch", curves_chart(curves, "loss")))
    for name, bucket, label in (("ndcg_by_history_length", "history_bucket", "history length (items)"),
                                ("ndcg_by_popularity", "popularity_bucket", "training interactions of the test item")):
        path = root / paths.PLOTS_DIR / "evaluate" / f"{name}.csv"
        if not path.exists():
            raise ArtifactError(str(path), "not found", "dvc repro evaluate")
        charts.append((f"Test NDCG@10 by {label}", bucket_chart(pl.read_csv(path), bucket, label)))
    figures = "".join(f"<figure>{svg}<figcaption>{html.escape(cap)}</figcaption></figure>" for cap, svg in charts)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>molar report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>molar report</h1>
<p class="muted">workspace {html.escape(str(root.resolve()))} · generated {when} ·
protocol: {html.escape(proto['split'])}, history masking <b>{html.escape(proto['masking'])}</b>, candidates
{html.escape(str(proto['candidates']))} ({proto['num_items']:,} items), {proto['num_users']:,} users;
CI: {html.escape(proto.get('ci', ''))}</p>
<h2>Dataset</h2>{stats_table(stats)}
<h2>Metrics</h2>{metrics_table(metrics, models)}
<p class="muted">ΔNDCG@10: mean per-user paired difference to SASRec on the test split with its paired-bootstrap
95% interval; an interval that contains 0 means no resolved difference.</p>
<h2>Training and breakdowns</h2><div class="charts">{figures}</div>
<h2>Sample users</h2>
<p class="muted">For each sampled user: their last items, the held-out test item (orange), and each model's top-10
on the test split{" with the user's history excluded" if proto['masking'] == 'history' else ""} (the held-out item
in green where a model ranks it).</p>
{gallery(root, [m for m in models if m != POPULARITY], proto['masking'], gallery_users, seed)}
</body></html>
"""
