"""Throughput of the item encoders on this machine over ML-100K, against the machine's own matmul peak.

For each encoder/backend: items/s, FLOPs per item (estimated from the model config and the real token counts),
the achieved GFLOP/s and its fraction of a large fp32 / bf16 torch matmul measured here, in the same run.
Also the whole `embed` stage as DVC runs it (`python -m stages.embed`, a fresh process and an empty cache) with
the default params: it must finish ML-100K in under 2 minutes on the 2-core CPU.

    python -m bench.embed [--data ../shared/datasets/ml-100k] [--mllm-sample 256] [--skip-stage] [--json PATH]
    .venv-vllm/bin/python -m bench.embed --skip-stage [--mllm-model DIR]   # adds vLLM against transformers
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch
import yaml

from bench.common import ROOT, add_json_option, markdown_table, write_result
from bench.machine import matmul_peak
from molar_core.encoders import EncoderConfig, build_encoder
from molar_core.encoders.backends import vllm_unavailable_reason
from pipeline import paths
from pipeline.params import ImageParams, PrepareParams
from stages import prepare

# Qwen2-VL-2B-Instruct's published config, for a projection only (no such weights exist offline here)
QWEN2VL_2B = {"hidden": 1536, "layers": 28, "inter": 8960, "heads": 12, "kv_heads": 2,
              "v_embed": 1280, "v_depth": 32, "v_mlp_ratio": 4, "v_heads": 16, "merge": 2, "patch": 14}


def bert_flops(cfg, tokens: list[int]) -> float:
    """Forward FLOPs per item of a BERT encoder over its real tokens (2 per multiply-add)."""
    h, i, n_layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per = [n_layers * (2 * s * (4 * h * h + 2 * h * i) + 4 * s * s * h) for s in tokens]
    return sum(per) / len(per)


def decoder_flops(h: int, inter: int, layers: int, heads: int, kv_heads: int, s: float) -> float:
    kv = h // heads * kv_heads
    return layers * (2 * s * (2 * h * h + 2 * h * kv + 3 * h * inter) + 4 * s * s * h)


def vision_flops(e: int, depth: int, mlp_ratio: int, hidden: int, merge: int, patch: int, patches: float) -> float:
    """Qwen2-VL vision tower: patch embedding, `depth` ViT blocks over all patches, the 2x2 merger."""
    p = patches
    embed = 2 * p * (3 * 2 * patch * patch) * e
    blocks = depth * (2 * p * (4 * e * e + 2 * e * e * mlp_ratio) + 4 * p * p * e)
    merged = p / merge ** 2
    merger = 2 * merged * ((e * merge ** 2) ** 2 + e * merge ** 2 * hidden)
    return embed + blocks + merger


def prepared_items(data: Path, root: Path) -> pl.DataFrame:
    items = root / paths.ITEMS
    if not items.exists():
        prepare.run(PrepareParams(source="recbole_atomic", path=str(data),
                                  images=ImageParams(dir=str(data / "posters"))), root)
    return pl.read_parquet(items)


def time_encoder(cfg: EncoderConfig, texts: list[str], images: list[str | None], threads: int) -> tuple:
    torch.set_num_threads(threads)
    enc = build_encoder(cfg)
    enc.encode(texts[:8], images[:8])  # warm-up (allocator, lazy init)
    enc.counts = type(enc.counts)()
    t = time.perf_counter()
    enc.encode(texts, images)
    return enc, time.perf_counter() - t


def stage_run(data_root: Path, threads: int) -> float:
    """`python -m stages.embed` in a fresh process on an empty cache (default params); wall seconds."""
    with tempfile.TemporaryDirectory(prefix="molar-bench-embed-") as d:
        root = Path(d)
        (root / paths.PREPARED).mkdir(parents=True)
        (root / paths.ITEMS).write_bytes((data_root / paths.ITEMS).read_bytes())
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["embed"]["threads"] = threads
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "stages.embed", "params.yaml"], cwd=root, env=env,
                             capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
        if res.returncode != 0:
            raise SystemExit(f"stage failed:\n{res.stdout}\n{res.stderr}")
        text = " ".join(ln.strip() for ln in res.stderr.splitlines() if ln.strip())
        print(f"  stage (threads={threads}): {wall:.1f} s wall | {text[text.find('embed:'):][:400]}")
        return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "ml-100k")
    ap.add_argument("--mllm-sample", type=int, default=256)
    ap.add_argument("--skip-stage", action="store_true")
    ap.add_argument("--mllm-model", default=None, help="model for vLLM vs transformers (default: a tiny Qwen2-VL)")
    add_json_option(ap, "the table (its cells), the matmul peaks and the stage's wall times")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="molar-bench-data-"))
    items = prepared_items(args.data, work)
    texts, images = items["text"].to_list(), items["image_path"].to_list()
    print(f"ML-100K: {len(texts):,} items, {sum(p is not None for p in images):,} with a poster; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other work on the machine skews timings)")

    peaks = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        peaks[threads] = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print("matmul peak (2048^3): " + "; ".join(f"{t} thread{'s' * (t > 1)}: fp32 {p['fp32']:.0f}, bf16 "
                                                f"{p['bf16']:.0f} GFLOP/s" for t, p in peaks.items()))

    rows = []

    def add(name: str, backend: str, threads: int, n: int, seconds: float, flops: float, tokens: float,
            peak_key: str) -> None:
        ips = n / seconds
        achieved = ips * flops / 1e9
        rows.append([name, backend, str(threads), f"{n:,}", f"{tokens:.0f}", f"{flops / 1e9:.3f}", f"{ips:,.0f}",
                     f"{achieved:.1f}", f"{achieved / peaks[threads][peak_key]:.0%} of {peak_key}"])

    # sentence encoder over all items
    from transformers import AutoConfig

    from molar_core.encoders.sentence import default_model_dir

    bert_cfg = AutoConfig.from_pretrained(default_model_dir(), trust_remote_code=False)
    for threads in (1, 2):
        for dtype, key in (("float32", "fp32"), ("bfloat16", "bf16")):
            enc, sec = time_encoder(EncoderConfig(encoder="sentence", dtype=dtype, batch_size=64), texts,
                                    images, threads)
            toks = [min(len(t), enc.max_tokens) for t in enc.tokenizer(texts)["input_ids"]]
            add(f"sentence MiniLM-L6 {dtype}", "transformers", threads, len(texts), sec, bert_flops(bert_cfg, toks),
                sum(toks) / len(toks), key)

    # tiny Qwen2-VL on a sample with posters
    sample = [i for i, p in enumerate(images) if p is not None][: args.mllm_sample]
    s_texts, s_images = [texts[i] for i in sample], [images[i] for i in sample]
    for max_pixels in (28 * 28, 28 * 28 * 16):
        for threads in (1, 2):
            enc, sec = time_encoder(EncoderConfig(encoder="mllm", model="tiny", max_pixels=max_pixels, batch_size=32,
                                                  backend="transformers"),
                                    s_texts, s_images, threads)
            tc = enc.backbone.config.get_text_config()
            vc = enc.backbone.config.vision_config
            prompts = [enc._render(t, True) for t in s_texts]
            text_tokens = [len(x) for x in enc.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
            img_tokens = max_pixels // 28 ** 2  # posters are taller than wide; the bound is close for 185x278
            s = sum(text_tokens) / len(text_tokens) - 1 + img_tokens
            fl = decoder_flops(tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers, tc.num_attention_heads,
                               tc.num_key_value_heads, s)
            fl += vision_flops(vc.embed_dim, vc.depth, vc.mlp_ratio, vc.hidden_size, vc.spatial_merge_size,
                               vc.patch_size, img_tokens * vc.spatial_merge_size ** 2)
            add(f"mllm tiny Qwen2-VL, {img_tokens} img tok", "transformers", threads, len(sample), sec, fl, s, "fp32")
            q = QWEN2VL_2B
            q_fl = decoder_flops(q["hidden"], q["inter"], q["layers"], q["heads"], q["kv_heads"], s) + vision_flops(
                q["v_embed"], q["v_depth"], q["v_mlp_ratio"], q["hidden"], q["merge"], q["patch"], img_tokens * 4)
            if threads == 2:
                rows.append([f"(projection) Qwen2-VL-2B, {img_tokens} img tok", "transformers bf16", "2", "-",
                             f"{s:.0f}", f"{q_fl / 1e9:.1f}", f"~{0.5 * peaks[2]['bf16'] * 1e9 / q_fl:.1f}",
                             "-", "assumes 50% of bf16 peak"])

    # vLLM against transformers on one model (the same items; on a GPU pass a real model with --mllm-model)
    reason = vllm_unavailable_reason()
    if reason:
        rows.append(["any", "vllm", "-", "-", "-", "-", "-", "-", f"unavailable: {reason}"])
    else:
        from molar_core.encoders.tiny import build_tiny_qwen2vl

        model = args.mllm_model or str(build_tiny_qwen2vl(work / "tiny128", seed=0, hidden=128, heads=2))
        name = "tiny Qwen2-VL h128" if args.mllm_model is None else Path(model).name
        threads = 2
        walls, vecs = {}, {}
        for backend in ("transformers", "vllm"):
            cfg = EncoderConfig(encoder="mllm", model=model, backend=backend, max_pixels=28 * 28 * 4, batch_size=32,
                                dtype="auto")
            t0 = time.perf_counter()
            enc, sec = time_encoder(cfg, s_texts, s_images, threads)
            vecs[backend] = enc.encode(s_texts[:32], s_images[:32])
            walls[backend] = sec
            rows.append([f"mllm {name}", backend, str(threads), f"{len(sample):,}", "-", "-",
                         f"{len(sample) / sec:,.0f}", "-", f"load+warm-up {time.perf_counter() - t0 - sec:.0f} s"])
        cos = torch.nn.functional.cosine_similarity(vecs["transformers"], vecs["vllm"], dim=1)
        rows.append([f"mllm {name}", "vllm / transformers", str(threads), "-", "-", "-",
                     f"{walls['transformers'] / walls['vllm']:.2f}x", "-", f"min cosine {cos.min():.5f}"])

    head = ["encoder", "backend", "threads", "items", "tokens/item", "GFLOP/item", "items/s", "GFLOP/s",
            "of machine peak"]
    print()
    print(markdown_table(head, rows))

    if not args.skip_stage:
        print("\nwhole stage, default params (sentence encoder), fresh process, empty cache, all items:")
        stage_walls = {t: stage_run(work, t) for t in (0, 1)}
        verdict = "OK" if min(stage_walls.values()) < 120 else "TOO SLOW"
        print(f"  limit 120 s: {verdict} (threads 0 = torch default {os.cpu_count()}, 1 = one thread)")
    if args.json is not None:
        write_result(args.json, {"items": len(texts), "matmul_peak_gflops": peaks, "header": head,
                                 "rows": [dict(zip(head, r)) for r in rows],
                                 "stage_wall_s": None if args.skip_stage else stage_walls})


if __name__ == "__main__":
    main()
