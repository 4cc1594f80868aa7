"""DVC stage `train`: the content user model over cached item vectors, with post-alignment to SASRec.

`python -m stages.train NAME` trains variant NAME of `train.variants` into artifacts/NAME/ (same file contract
as SASRec's: model, config, item and user vectors), so `index` and `evaluate` treat it like any model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

from molar_core.checkpoint import CHECKPOINT_FORMAT, write_checkpoint
from molar_core.errors import ArtifactError
from molar_core.io import runtime_info, sha256_file, write_json_atomic
from molar_core.models.build import build_molar
from molar_core.models.molar import Molar
from molar_core.models.sasrec import load_sasrec, sasrec_weights_path
from molar_core.store import load_item_embeddings
from molar_core.training import encode_users, fit, pick_device, ranking_metrics, seed_everything
from molar_core.vectors import USER_VECTORS_DOC
from pipeline import paths
from pipeline.configs import content_config, fit_config, molar_loss_config
from pipeline.params import Params, ProtocolParams, TrainParams
from pipeline.readers import full_sequences, open_trained, read_prepared, read_stats
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


def run(name: str, p: TrainParams, protocol: ProtocolParams, root: Path = Path(".")) -> dict:
    stats = read_stats(root)
    items = read_prepared(root, "items")
    train, valid, test = (read_prepared(root, s) for s in ("train", "valid", "test"))
    ids, feats = load_item_embeddings(root / paths.EMBEDDINGS, items)
    if not torch.equal(ids.to(torch.int64), torch.arange(1, stats["items"] + 1)):
        raise ArtifactError(str(root / paths.EMBEDDINGS), "item ids do not match data/prepared", "dvc repro embed")
    torch.set_num_threads(process_threads(p.threads))
    gen = seed_everything(p.seed)
    device = pick_device(p.device)
    ccfg = content_config(p, stats["items"], feats.shape[1], train_items(stats))  # llm: dim is the LLM's width
    lcfg = molar_loss_config(p)
    id_dir = None
    if p.align_alpha > 0 or p.joint:  # aligned to a SASRec trained on this very data
        id_dir = open_trained(root, "sasrec", stats).path
    # the run that validates aligns to the early-stopped SASRec (a refit one has trained on the validation items)
    id_model = load_sasrec(id_dir, weights="early_stopped") if id_dir is not None else None
    model = build_molar(ccfg, feats, lcfg, id_model, device)
    seqs = training_sequences(train["items"].to_list(), p)
    vh, vt = valid["history"].to_list(), valid["target"].to_list()
    mask = protocol.masking == "history"

    def user_vectors(histories: list[list[int]]) -> torch.Tensor:
        return model.scoring_form(encode_users(model.user_vectors, histories, p.max_len, device))

    def item_vectors() -> torch.Tensor:
        with torch.no_grad():
            return model.scoring_form(model.item_vectors().detach().float().cpu())

    metric = protocol.early_stop_metric
    id_files = {w: sasrec_weights_path(id_dir, w) for w in ("early_stopped", "model")} if id_dir is not None else {}
    settings = (p.model_dump(), protocol.model_dump(), {f"id_model_{w}": sha256_file(f) for w, f in id_files.items()})
    resume = training_resume(root, name, *settings)
    with epoch_progress(p.max_epochs) as advance:
        result = fit(model, seqs, lambda b: model.loss(b, gen),
                     lambda: ranking_metrics(user_vectors(vh), item_vectors()[:ccfg.catalogue], vh, vt, protocol.ks,
                                             mask),  # cold items (past the catalogue) are not known yet
                     fit_config(p, metric, f"train@{name}"),
                     gen, progress=lambda row: advance(row["epoch"], f"loss {row['loss']:.4f} valid {metric} "
                                                       f"{row['valid_' + metric]:.4f}"), resume=resume)
    refit_info, refit_resume = None, None
    if p.refit:  # user_vectors and item_vectors above read `model`: they then score the refit one
        def build(g: torch.Generator) -> tuple[Molar, Callable]:
            # the saved SASRec fresh from its file (joint training changed the one above; after a train_id refit
            # it is the refit one, as this run trains on the validation items too), loaded before the content
            # model as above so that both runs draw the same initial weights
            sasrec = load_sasrec(id_dir) if id_dir is not None else None
            fresh = build_molar(ccfg, feats, lcfg, sasrec, device)
            return fresh, lambda b: fresh.loss(b, g)

        model, refit_info, refit_resume = refit(build, test, p, result.best_epoch, root, name, f"train@{name}",
                                                *settings)
    if not is_main_process():  # a data-parallel group's other ranks: rank 0 holds the same model and writes it
        return {}
    model.eval()
    user_ids = torch.tensor(train["user_id"].to_list())
    histories = {"train": train["items"].to_list(), "valid": vh, "test": test["history"].to_list(),
                 "next": full_sequences(test)}
    item_vecs = item_vectors()
    splits = {split: user_vectors(hist) for split, hist in histories.items()}
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("id_model.") or p.joint}
    meta = {"model": name, "num_items": str(stats["items"]), "runtime": runtime_info(p.seed)}
    config = {"format_version": CHECKPOINT_FORMAT, "model": name, "kind": "molar", "data": data_fingerprint(root, stats),
              "content_config": ccfg.to_dict(), "loss_config": lcfg.to_dict(),
              "params": p.model_dump(), "protocol": protocol.model_dump(),
              "item_features": {"store": str(paths.EMBEDDINGS), "dim": int(feats.shape[1])},
              "id_model": str(paths.model_dir("sasrec")) if id_model is not None else None,
              "id_model_weights": ({"early_stopped_run": id_files["early_stopped"].name,
                                    "refit": id_files["model"].name if p.refit else None} if id_files else None),
              "scoring": "cosine (user and item vectors saved L2-normalised)" if p.rec_loss == "infonce" else "dot",
              "best_epoch": result.best_epoch, "epochs_run": len(result.curve), "valid": result.best_metrics,
              "train_seconds": result.seconds, "resumed_after_epoch": resume.resumed_from,
              "refit": refit_info, "runtime": runtime_info(p.seed),
              "files": {"model.safetensors": "state dict (with the ID model's id_model.* when joint, else without)",
                        "item_vectors.safetensors": "items 1..N scoring vectors", "user_vectors.safetensors": USER_VECTORS_DOC}}
    write_checkpoint(root / paths.model_dir(name), config, state, item_vecs, user_ids, splits, meta)
    resume.clear()
    if refit_resume is not None:
        refit_resume.clear()
    write_curve(root / paths.PLOTS_DIR / "train" / f"{name}.csv", result.curve)
    metrics, line = training_summary(result, refit_info, metric)
    write_json_atomic(root / paths.METRICS_DIR / f"train_{name}.json", metrics)
    summary("train", f"{name}: {line} on {device}")
    return config


def main(params: Params | None = None, variant: str | None = None) -> None:
    """`python -m stages.train VARIANT [params.yaml]`, or `molar train VARIANT` with params it has already
    validated; a VARIANT that train_variants lacks is refused with the names it has."""
    argv: list[str] = []
    if variant is None:
        if not sys.argv[1:]:
            raise SystemExit("usage: python -m stages.train VARIANT [params.yaml]")
        variant, *argv = sys.argv[1:]
    params = params or params_from_argv(argv)
    p = params.train_variant(variant)
    train_processes("stages.train", [variant], params, p.distributed, lambda: run(variant, p, params.protocol))


if __name__ == "__main__":
    run_main(main)
