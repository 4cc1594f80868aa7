"""DVC stage `finetune_encoder`: stage 1 of the method, the MLLM item encoder trained on the dataset's mixtures.

Writes artifacts/encoder/ (a model directory `embed` loads with `embed.model: artifacts/encoder`, plus
molar_finetune.json: the settings it was trained for and what it was trained on), metrics/finetune_encoder.json
and plots/finetune_encoder/curve.csv. `init: none` (the default) writes only molar_finetune.json saying so.
The encoder is trained with the `embed` section's prompts, pooling and image size, so its vectors are the ones
`embed` computes; embed refuses a fine-tuned model whose recorded settings differ from its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from molar_core.encoders import EncoderConfig, build_encoder
from molar_core.encoders.factory import DEFAULT_MLLM
from molar_core.encoders.finetuned_dir import FINETUNE_FILE, recorded_settings
from molar_core.encoders.tiny import build_tiny_qwen2vl
from molar_core.finetune.encoder_training import FinetuneConfig, MixtureSpec, finetune_encoder, save_encoder
from molar_core.finetune.mixtures import MIXTURES
from molar_core.io import atomic_dir, runtime_info, write_bytes_atomic, write_json_atomic
from molar_core.training import FitConfig, seed_everything
from pipeline import paths
from pipeline.params import EmbedParams, FinetuneEncoderParams, Params
from pipeline.readers import read_prepared, read_stats
from stages.common import (
    data_fingerprint,
    epoch_progress,
    params_from_argv,
    run_main,
    summary,
    training_resume,
    write_curve,
)
from stages.embed import resolve_images

METRICS = paths.METRICS_DIR / "finetune_encoder.json"
CURVE = paths.PLOTS_DIR / "finetune_encoder" / "curve.csv"


def encoder_config(p: FinetuneEncoderParams, e: EmbedParams, model_dir: str) -> EncoderConfig:
    """The embed section's rendering and pooling (what the vectors will be), this section's device and model."""
    return EncoderConfig(encoder="mllm", model=model_dir, revision=p.revision if p.init == "pretrained" else None,
                         backend="transformers", prompt=e.prompt, prompt_text_only=e.prompt_text_only,
                         summary_token=e.summary_token, pooling=e.pooling, normalize=False,
                         use_images=e.use_images, max_pixels=e.max_pixels, max_image_pixels=e.max_image_pixels,
                         dtype="float32", batch_size=p.batch_size, max_text_tokens=e.max_text_tokens, device=p.device,
                         threads=p.threads, trust_remote_code=p.trust_remote_code)


def _off(root: Path, p: FinetuneEncoderParams) -> dict:
    with atomic_dir(root / paths.ENCODER) as out:
        write_json_atomic(out / FINETUNE_FILE, {"init": "none", "params": p.model_dump()})
    write_bytes_atomic(root / CURVE, b"epoch\n")
    metrics = {"init": "none"}
    write_json_atomic(root / METRICS, metrics)
    summary("finetune_encoder", "off (finetune_encoder.init: none); embed uses its own model")
    return metrics


def run(p: FinetuneEncoderParams, e: EmbedParams, root: Path = Path(".")) -> dict:
    if p.init == "none":
        return _off(root, p)
    stats = read_stats(root)
    items = resolve_images(read_prepared(root, "items"), root)
    train, valid = read_prepared(root, "train"), read_prepared(root, "valid")
    texts, images = items["text"].to_list(), items["image_path"].to_list()
    gen = seed_everything(p.seed)
    tmp = root / paths.RESUME_DIR / "encoder-base"  # the scratch build, deleted once loaded (rebuilt identically)
    try:
        if p.init == "scratch":
            s = p.scratch
            corpus = texts + [e.prompt, e.prompt_text_only]
            base = build_tiny_qwen2vl(tmp, seed=p.seed, hidden=s.hidden, layers=s.layers,
                                      heads=s.heads, kv_heads=s.kv_heads, vision_depth=s.vision_depth,
                                      vision_dim=s.vision_dim, vision_heads=s.vision_heads, vision_mlp_ratio=4,
                                      vocab_size=s.vocab_size, max_pixels=e.max_pixels, corpus=corpus)
            model_name = str(base)
        else:
            model_name = p.model or DEFAULT_MLLM
        encoder = build_encoder(encoder_config(p, e, model_name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    method = p.method if p.method != "auto" else ("full" if p.init == "scratch" else "lora")
    cfg = FinetuneConfig(
        mixtures={m: MixtureSpec(getattr(p, m).size, getattr(p, m).weight, getattr(p, m).objective)
                  for m in MIXTURES},
        history=p.history, tau=p.tau, method=method, lora_r=p.lora.r, lora_alpha=p.lora.alpha,
        lora_dropout=p.lora.dropout, lora_targets=tuple(p.lora.targets), valid_users=p.valid_users,
        fit=FitConfig(lr=p.lr, weight_decay=p.weight_decay, batch_size=p.batch_size, max_epochs=p.max_epochs,
                      patience=p.patience, precision=p.precision, monitor="ndcg@10",
                      name="finetune_encoder"))
    resume = training_resume(root, "encoder", p.model_dump(), encoder.settings())
    with epoch_progress(p.max_epochs) as advance:
        result = finetune_encoder(encoder, texts, images, train["items"].to_list(), valid["history"].to_list(),
                                  valid["target"].to_list(), cfg, gen, resume=resume,
                                  progress=lambda row: advance(row["epoch"], f"loss {row['loss']:.4f} valid ndcg@10 "
                                                               f"{row['valid_ndcg@10']:.4f}"))
    fit = result.fit
    record = {"init": p.init, "base_model": (p.model or DEFAULT_MLLM) if p.init == "pretrained" else "scratch",
              "method": method, "settings": recorded_settings(encoder.cfg, encoder.pooling),
              "data": data_fingerprint(root, stats), "best_epoch": fit.best_epoch, "epochs_run": len(fit.curve),
              "valid": fit.best_metrics, "counts": result.counts, "trainable_params": result.trainable_params,
              "total_params": result.total_params, "train_seconds": fit.seconds,
              "resumed_after_epoch": resume.resumed_from, "params": p.model_dump(), "runtime": runtime_info(p.seed)}
    with atomic_dir(root / paths.ENCODER) as out:
        save_encoder(encoder, out)
        write_json_atomic(out / FINETUNE_FILE, record)
    resume.clear()
    if fit.curve:
        write_curve(root / CURVE, fit.curve)
    else:
        write_bytes_atomic(root / CURVE, b"epoch\n")
    metrics = {k: record[k] for k in ("init", "method", "best_epoch", "epochs_run", "valid", "counts",
                                      "trainable_params", "total_params")}
    metrics["train_seconds"] = round(fit.seconds, 1)
    write_json_atomic(root / METRICS, metrics)
    used = ", ".join(f"{m} {c['used']:,}" for m, c in result.counts.items() if m in MIXTURES)
    skipped = "; ".join(f"{m} skipped {', '.join(f'{k} {v:,}' for k, v in c['skipped'].items())}"
                        for m, c in result.counts.items() if m in MIXTURES and c["skipped"])
    summary("finetune_encoder", f"{p.init} encoder ({method}, {result.trainable_params:,} of "
            f"{result.total_params:,} params trained) on pairs {used}"
            + (f" ({skipped})" if skipped else "")
            + f"; best epoch {fit.best_epoch}/{len(fit.curve)}, valid ndcg@10 of the encoder alone "
            f"{fit.best_metrics['ndcg@10']:.4f}, {fit.seconds:.0f}s on {encoder.device}")
    return record


def main(params: Params | None = None) -> None:
    """`python -m stages.finetune_encoder [params.yaml]`, or `molar` with params it has already validated."""
    params = params or params_from_argv()
    run(params.finetune_encoder, params.embed)


if __name__ == "__main__":
    run_main(main)
