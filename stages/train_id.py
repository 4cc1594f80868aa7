"""DVC stage `train_id`: SASRec over item ids -> checkpoint, item and user vectors, training curve."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from molar_core.checkpoint import CHECKPOINT_FORMAT, write_checkpoint
from molar_core.io import runtime_info, write_json_atomic
from molar_core.models.build import build_sasrec
from molar_core.models.sasrec import SASRec, sasrec_loss
from molar_core.training import encode_users, fit, pick_device, ranking_metrics, seed_everything
from molar_core.vectors import USER_VECTORS_DOC
from pipeline import paths
from pipeline.configs import fit_config, sasrec_config
from pipeline.params import Params, ProtocolParams, TrainIdParams
from pipeline.readers import full_sequences, read_prepared, read_stats
from stages.common import (
    data_fingerprint,
    epoch_progress,
    is_main_process,
    params_from_argv,
    process_threads,
    refit,
    run_main,
    summary,
    train_items,
    train_processes,
    training_resume,
    training_sequences,
    training_summary,
    write_curve,
)

MODEL = "sasrec"


def run(p: TrainIdParams, protocol: ProtocolParams, root: Path = Path(".")) -> dict:
    stats = read_stats(root)
    train, valid, test = (read_prepared(root, s) for s in ("train", "valid", "test"))
    torch.set_num_threads(process_threads(p.threads))
    gen = seed_everything(p.seed)
    device = pick_device(p.device)
    cfg = sasrec_config(p, stats["items"], train_items(stats))
    model = build_sasrec(cfg, p.sparse_item_updates, device)
    seqs = training_sequences(train["items"].to_list(), p)
    vh, vt = valid["history"].to_list(), valid["target"].to_list()
    mask = protocol.masking == "history"

    def validate() -> dict:
        users = encode_users(model.user_vectors, vh, p.max_len, device)
        items = model.item_vectors()[:cfg.catalogue].detach().float().cpu()  # cold items are not known yet
        return ranking_metrics(users, items, vh, vt, protocol.ks, mask)

    metric = protocol.early_stop_metric
    settings = (p.model_dump(), protocol.model_dump())
    resume = training_resume(root, MODEL, *settings)
    with epoch_progress(p.max_epochs) as advance:
        result = fit(model, seqs, lambda b: sasrec_loss(model, b, p.loss, p.num_negatives, gen), validate,
                     fit_config(p, metric, "train_id"),
                     gen, progress=lambda row: advance(row["epoch"], f"loss {row['loss']:.4f} valid {metric} "
                                                       f"{row['valid_' + metric]:.4f}"), resume=resume)
    refit_info, refit_resume = None, None
    early_stopped = model  # refit trains a new model: this one stays as it is
    if p.refit:
        def build(g: torch.Generator) -> tuple[SASRec, Callable]:
            fresh = build_sasrec(cfg, p.sparse_item_updates, device)
            return fresh, lambda b: sasrec_loss(fresh, b, p.loss, p.num_negatives, g)

        model, refit_info, refit_resume = refit(build, test, p, result.best_epoch, root, MODEL, "train_id", *settings)
    if not is_main_process():  # a data-parallel group's other ranks: rank 0 holds the same model and writes it
        return {}
    model.eval()
    user_ids = torch.tensor(train["user_id"].to_list())
    splits = {"train": encode_users(model.user_vectors, train["items"].to_list(), p.max_len, device),
              "valid": encode_users(model.user_vectors, vh, p.max_len, device),
              "test": encode_users(model.user_vectors, test["history"].to_list(), p.max_len, device),
              "next": encode_users(model.user_vectors, full_sequences(test), p.max_len, device)}
    meta = {"model": MODEL, "num_items": str(cfg.num_items), "runtime": runtime_info(p.seed)}
    config = {"format_version": CHECKPOINT_FORMAT, "model": MODEL, "data": data_fingerprint(root, stats),
              "config": cfg.to_dict(), "params": p.model_dump(), "protocol": protocol.model_dump(),
              "best_epoch": result.best_epoch, "epochs_run": len(result.curve), "valid": result.best_metrics,
              "train_seconds": result.seconds, "training_windows": len(seqs), "resumed_after_epoch": resume.resumed_from,
              "refit": refit_info, "runtime": runtime_info(p.seed),
              "files": {"model.safetensors": "state dict", "item_vectors.safetensors": "items 1..N scoring vectors",
                        "user_vectors.safetensors": USER_VECTORS_DOC}}
    if p.refit:
        config["files"]["model.safetensors"] = "state dict of the refit model (trained on the validation items too)"
        config["files"]["early_stopped.safetensors"] = ("state dict of the early-stopped model before the refit: "
                                                        "what a model that validates aligns to")
    write_checkpoint(root / paths.model_dir(MODEL), config, dict(model.state_dict()),
                     model.item_vectors().detach().cpu(), user_ids, splits, meta,
                     {"early_stopped.safetensors": dict(early_stopped.state_dict())} if p.refit else None)
    resume.clear()
    if refit_resume is not None:
        refit_resume.clear()
    write_curve(root / paths.PLOTS_DIR / "train_id" / "curve.csv", result.curve)
    metrics, line = training_summary(result, refit_info, metric)
    write_json_atomic(root / paths.METRICS_DIR / "train_id.json", metrics)
    summary("train_id", f"SASRec {line} on {device}")
    return config


def main(params: Params | None = None) -> None:
    """`python -m stages.train_id [params.yaml]`, or `molar` with params it has already validated."""
    params = params or params_from_argv()
    train_processes("stages.train_id", [], params, params.train_id.distributed,
                    lambda: run(params.train_id, params.protocol))


if __name__ == "__main__":
    run_main(main)
