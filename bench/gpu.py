"""The CUDA paths against the CPU, and their throughput: one script for a GPU machine.

    python -m bench.gpu [--steps 20] [--items 512] [--json PATH]

Needs only torch, transformers and safetensors (plus numpy): the GPU machines here have no polars, faiss,
vllm or dvc, and no model weights, so the models are built from configs. Checks, each on CPU and CUDA from the
same weights and inputs:
- SASRec training step (fp32 and bf16 autocast): loss equal within tolerance, steps/s;
- Qwen2-VL item embedding (a small random model, transformers backend; fp32 CPU vs bf16 GPU): cosine per item;
- full-ranking top-k of user vectors against item vectors (exact torch top-k) at 1e5 and 1e6 items: same top-10
  ids, users/s.
On CUDA only (too slow for a CPU column): Qwen2-VL-2B's shape (random weights, real vocabulary size) embedding
items in bf16 through our transformers encoder, at the default one visual token and at 448x448 images, so the
embed stage's time for a real catalogue can be read off (items/s and hours per 1e6 items).
Prints a table of CPU vs CUDA values and the speed-up; exits 1 if a check fails. Without CUDA it says so and
runs the CPU column only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import add_json_option, markdown_table, write_result
from molar_core.data.synthetic import generate
from molar_core.models.sasrec import SASRec, SASRecConfig, sasrec_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_steps(device: torch.device, steps: int, precision: str) -> tuple[float, float]:
    """(first-step loss, steps/s) of SASRec on ML-100K-shaped synthetic batches from the same initial weights."""
    torch.manual_seed(0)
    data = generate("collaborative", users=1024, items=1682, length=51, seed=0)
    model = SASRec(SASRecConfig(num_items=1682, max_len=50, dropout=0.0)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [data.sequences[i:i + 128] for i in range(0, 1024, 128)]
    first = None

    def step(b):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = sasrec_loss(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    first = step(batches[0])
    _sync(device)
    t = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    _sync(device)
    return first, steps / (time.perf_counter() - t)


# Qwen/Qwen2-VL-2B-Instruct's config.json: text 1536 wide, 28 layers, 12 heads (2 KV), MLP 8960, vocabulary
# 151,936; vision tower 32 blocks of 1280, 16 heads, MLP ratio 4.
QWEN2VL_2B = dict(hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960, vocab_pad_to=151_936,
                  vision_depth=32, vision_dim=1280, vision_heads=16, vision_mlp_ratio=4)
TINY = dict(hidden=256, layers=4, heads=4)


def embed_items(device: torch.device, n: int, shape: dict = TINY, max_pixels: int = 28 * 28 * 4,
                image_side: int = 84) -> tuple[torch.Tensor, float]:
    """Vectors of n synthetic items (half with an image) from a random Qwen2-VL of `shape`, and items/s."""
    from PIL import Image

    from molar_core.encoders.base import EncoderConfig
    from molar_core.encoders.factory import build_encoder
    from molar_core.encoders.tiny import build_tiny_qwen2vl

    gpu = device.type == "cuda"
    with tempfile.TemporaryDirectory() as d:
        # the tiny model is built on the CPU for both columns (CUDA's generator would draw other weights); the
        # 2B shape, timed on CUDA alone, is built there in bf16
        big = shape is not TINY
        model = build_tiny_qwen2vl(Path(d) / "m", seed=0, max_pixels=max_pixels, device=device.type if big else "cpu",
                                   dtype=torch.bfloat16 if big else torch.float32, **shape)
        images = []
        for i in range(n):
            p = Path(d) / f"{i}.png"
            if i % 2 == 0:
                Image.new("RGB", (image_side - 28 + i % 7, image_side), (i * 37 % 256, i * 91 % 256, 128)).save(p)
                images.append(str(p))
            else:
                images.append(None)
        texts = [f"Title: item {i}. Genre: {['drama', 'comedy', 'horror'][i % 3]}" for i in range(n)]
        enc = build_encoder(EncoderConfig(encoder="mllm", model=str(model), backend="transformers",
                                          device=device.type, dtype="bfloat16" if gpu else "float32",
                                          batch_size=64, max_pixels=max_pixels))
        enc.encode(texts[:8], images[:8])
        _sync(device)
        t = time.perf_counter()
        vecs = enc.encode(texts, images)
        _sync(device)
        return vecs.float().cpu(), n / (time.perf_counter() - t)


def rank(device: torch.device, items: int, users: int = 8192, k: int = 10) -> tuple[torch.Tensor, float]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(users, 64, generator=g).to(device)
    v = torch.randn(items, 64, generator=g).to(device)
    torch.topk(u[:8] @ v.T, k)
    _sync(device)
    t = time.perf_counter()
    out = torch.cat([torch.topk(u[s:s + 1024] @ v.T, k).indices for s in range(0, users, 1024)])
    _sync(device)
    return out.cpu(), users / (time.perf_counter() - t)


ROW_KEYS = ("path", "cpu", "cuda", "speedup", "unit", "check")


def markdown(result: dict) -> str:
    """Both tables of a run (what it prints, and what docs/performance.md renders from its JSON): each path on
    CPU and CUDA with the speed-up and the check, then Qwen2-VL-2B's shape on CUDA."""
    text = markdown_table(["path", "CPU", "CUDA", "speed-up", "unit", "check"],
                          [[r[k] for k in ROW_KEYS] for r in result["rows"]]) + "\n"
    if result.get("qwen2vl_2b_cuda"):
        text += "\n" + markdown_table(["Qwen2-VL-2B shape, bf16, CUDA", "items/s", "hours per 1e6 items"],
                                      [[b["shape"], f"{b['items_per_s']:,.1f}", f"{b['hours_per_1e6_items']:.2f}"]
                                       for b in result["qwen2vl_2b_cuda"]]) + "\n"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--rank-items", type=int, nargs="+", default=[100_000, 1_000_000])
    add_json_option(ap, "both tables' numbers and the checks")
    args = ap.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if len(devices) == 1:
        print("no CUDA device: CPU column only")
    else:
        print(f"CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    rows, ok = [], True
    res = {d.type: {} for d in devices}
    for d in devices:
        for prec in ("fp32", "bf16"):
            res[d.type][f"train {prec}"] = train_steps(d, args.steps, prec)
        res[d.type]["embed"] = embed_items(d, args.items)
        for n in args.rank_items:
            res[d.type][f"rank {n:.0e} items"] = rank(d, n)
    for name, unit in (("train fp32", "steps/s"), ("train bf16", "steps/s"), ("embed", "items/s"),
                       *((f"rank {n:.0e} items", "users/s") for n in args.rank_items)):
        cpu_val, cpu_speed = res["cpu"][name]
        if "cuda" in res:
            gpu_val, gpu_speed = res["cuda"][name]
            if name.startswith("train"):
                check = abs(cpu_val - gpu_val) < (2e-2 if "bf16" in name else 1e-3)
                what = f"first loss {cpu_val:.4f} vs {gpu_val:.4f}"
            elif name == "embed":
                cos = torch.nn.functional.cosine_similarity(cpu_val, gpu_val, dim=1).min().item()
                check, what = cos > 0.99, f"min cosine {cos:.4f}"
            else:
                overlap = (cpu_val == gpu_val).float().mean().item()
                check, what = overlap > 0.999, f"same top-10 ids {overlap:.2%}"
            ok &= check
            rows.append((name, f"{cpu_speed:,.1f}", f"{gpu_speed:,.1f}", f"{gpu_speed / cpu_speed:.1f}x", unit,
                         f"{'OK' if check else 'FAIL'}: {what}"))
        else:
            rows.append((name, f"{cpu_speed:,.1f}", "-", "-", unit, "-"))
    big = []
    if "cuda" in res:
        for label, pixels, side in (("1 visual token (max_pixels 784, the default)", 28 * 28, 84),
                                    ("256 visual tokens (448x448 images)", 448 * 448, 448)):
            _, speed = embed_items(torch.device("cuda"), 2 * args.items, QWEN2VL_2B, pixels, side)
            big.append({"shape": label, "items_per_s": speed, "hours_per_1e6_items": 1e6 / speed / 3600})
    result = {"steps": args.steps, "items": args.items, "rank_items": args.rank_items, "ok": ok,
              "speed": {d: {name: v[1] for name, v in r.items()} for d, r in res.items()},
              "rows": [dict(zip(ROW_KEYS, r)) for r in rows], "qwen2vl_2b_cuda": big}
    print("\n" + markdown(result), end="")
    if args.json is not None:
        write_result(args.json, result)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
