"""How much picking the epoch on the test set inflates SASRec's test NDCG@10: a diagnostic, not a result.

    python -m bench.epoch_curve --workspace W [--set train_id.dropout=0.5 ...] [--seeds 0 1 2] [--epochs 60]
                                [--refit-from SWEEP] [--config bench/configs/X.yaml] [--json PATH]

W is a prepared workspace (`dvc repro prepare`). For each seed, SASRec is trained as `train_id`'s refit trains it
(`refit: true`: the same seed, every user's training items plus the validation item, constant learning rate), and
after every epoch its test NDCG@10 is measured with the history masked (molar_core.training.ranking_metrics, the
validation code, on the test split). Since the learning rate is constant, the model after epoch N is the refit
model of an N-epoch refit, bit for bit. The table gives per seed: the test NDCG@10 at the epoch count the refit
takes from early stopping on validation (with --refit-from, a bench/sweep.py folder of the same settings, whose
results it must reproduce), the mean over the last 10 epochs, and the maximum over epochs with its epoch. The
maximum is what a run that stops on the test metric reports; only the first column is a fair test number.
With `--set train_id.ema_decay=D` the curve is that of the moving average of the weights, which is what such a
refit saves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from bench.common import add_json_option, add_params_options, bench_params, markdown_table, write_result
from molar_core.io import read_json
from molar_core.models.build import build_sasrec
from molar_core.models.sasrec import sasrec_loss
from molar_core.training import encode_users, fit, ranking_metrics, seed_everything
from pipeline.configs import fit_config, sasrec_config
from pipeline.readers import read_prepared, read_stats
from stages.common import training_sequences


def epoch_curve(ws: Path, params, seed: int, epochs: int) -> list[float]:
    """Test NDCG@10 after each of `epochs` refit epochs of one seed."""
    p = params.train_id.model_copy(update={"seed": seed, "patience": epochs + 1})
    torch.set_num_threads(p.threads or torch.get_num_threads())
    stats, test = read_stats(ws), read_prepared(ws, "test")
    gen = seed_everything(seed)  # as stages.common.refit seeds the fresh model
    model = build_sasrec(sasrec_config(p, stats["items"]), p.sparse_item_updates, torch.device("cpu"))  # as train_id
    th, tt = test["history"].to_list(), test["target"].to_list()

    def test_metrics() -> dict:
        users = encode_users(model.user_vectors, th, p.max_len, torch.device("cpu"))
        return ranking_metrics(users, model.item_vectors().detach().float(), th, tt, [10], True)

    result = fit(model, training_sequences(th, p), lambda b: sasrec_loss(model, b, p.loss, p.num_negatives, gen),
                 test_metrics, fit_config(p, "ndcg@10", "test curve", max_epochs=epochs), gen)
    return [row["valid_ndcg@10"] for row in result.curve]


def markdown(result: dict) -> str:
    """Per seed and their mean: the fair test number (epochs from validation), the mean of the last 10 epochs
    and the test-picked maximum; what docs/results.md renders."""
    n, seeds = result["epochs"], result["seeds"]
    fair = all(s["fair"] for s in seeds)
    rows = [[s["seed"], f"{s['fair']['ndcg@10']:.4f} ({s['fair']['epoch']} epochs)" if s["fair"] else "",
             f"{s['mean_last_10']:.4f}", f"{s['max']:.4f} (epoch {s['max_epoch']})"] for s in seeds]
    rows.append(["mean", f"{np.mean([s['fair']['ndcg@10'] for s in seeds]):.4f}" if fair else "",
                 f"{np.mean([s['mean_last_10'] for s in seeds]):.4f}", f"{np.mean([s['max'] for s in seeds]):.4f}"])
    header = ["seed", "refit epochs from early stopping on validation (fair)", f"mean of epochs {n - 9}-{n}",
              f"best of {n} epochs, picked on the test set"]
    return markdown_table(header, rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True, help="holds data/prepared")
    add_params_options(ap, sets=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--refit-from", type=Path, help="bench/sweep.py folder with refit: true and the same --set")
    add_json_option(ap, "every seed's curve and the table's numbers")
    args = ap.parse_args()
    params = bench_params(args.params, args.config, args.set)
    seeds = []
    for seed in args.seeds:
        curve = epoch_curve(args.workspace, params, seed, args.epochs)
        fair = None
        if args.refit_from:
            run = args.refit_from / f"seed{seed}"
            best = read_json(run / "metrics" / "train_id.json")["best_epoch"]
            swept = read_json(run / "results" / "sasrec.json")["ndcg@10"]
            if best > len(curve) or abs(curve[best - 1] - swept) > 1e-6:
                sys.exit(f"seed {seed}: epoch {best} gives {curve[best - 1] if best <= len(curve) else None}, "
                         f"{run} has {swept:.6f}: not the same settings (or --epochs < {best})")
            fair = {"ndcg@10": swept, "epoch": best}
        top = int(np.argmax(curve))
        seeds.append({"seed": seed, "curve": curve, "fair": fair, "mean_last_10": float(np.mean(curve[-10:])),
                      "max": curve[top], "max_epoch": top + 1})
        print(" ".join(f"{v:.4f}" for v in curve), flush=True)
    result = {"workspace": str(args.workspace), "set": args.set, "epochs": args.epochs, "seeds": seeds}
    print("\n" + markdown(result), end="")
    if args.json is not None:
        write_result(args.json, result)


if __name__ == "__main__":
    main()
