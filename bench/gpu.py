"""The CUDA paths against the CPU, and their throughput: one script for a GPU machine.

    python bench/gpu.py [--steps 20] [--items 512]

Needs only torch, transformers and safetensors (plus numpy): the GPU machines here have no polars, faiss,
vllm or dvc, and no model weights, so the models are built from configs. Checks, each on CPU and CUDA from the
same weights and inputs:
- SASRec training step (fp32 and bf16 autocast): loss equal within tolerance, steps/s;
- Qwen2-VL item embedding (a small random model, transformers backend; fp32 CPU vs bf16 GPU): cosine per item;
- full-ranking top-k of user vectors against item vectors (exact torch top-k): same top-10 ids, users/s.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molar_core.data.synthetic import generate  # noqa: E402
from molar_core.models.sasrec import SASRec, SASRecConfig, sasrec_loss  # noqa: E402


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


def embed_items(device: torch.device, n: int) -> tuple[torch.Tensor, float]:
    """Vectors of n synthetic items from a small random Qwen2-VL (built offline), and items/s."""
    from PIL import Image

    from molar_core.encoders.base import EncoderConfig
    from molar_core.encoders.factory import build_encoder
    from molar_core.encoders.tiny import build_tiny_qwen2vl

    with tempfile.TemporaryDirectory() as d:
        model = build_tiny_qwen2vl(Path(d) / "m", seed=0, hidden=256, layers=4, heads=4)
        images = []
        for i in range(n):
            p = Path(d) / f"{i}.png"
            if i % 2 == 0:
                Image.new("RGB", (56 + i % 7, 84), (i * 37 % 256, i * 91 % 256, 128)).save(p)
                images.append(str(p))
            else:
                images.append(None)
        texts = [f"Title: item {i}. Genre: {['drama', 'comedy', 'horror'][i % 3]}" for i in range(n)]
        enc = build_encoder(EncoderConfig(encoder="mllm", model=str(model), backend="transformers",
                                          device=device.type, dtype="bfloat16" if device.type == "cuda" else "float32",
                                          batch_size=64, max_pixels=28 * 28 * 4))
        enc.encode(texts[:8], images[:8])
        _sync(device)
        t = time.perf_counter()
        vecs = enc.encode(texts, images)
        _sync(device)
        return vecs.float().cpu(), n / (time.perf_counter() - t)


def rank(device: torch.device, users: int = 8192, items: int = 100_000, k: int = 10) -> tuple[torch.Tensor, float]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(users, 64, generator=g).to(device)
    v = torch.randn(items, 64, generator=g).to(device)
    torch.topk(u[:8] @ v.T, k)
    _sync(device)
    t = time.perf_counter()
    out = torch.cat([torch.topk(u[s:s + 1024] @ v.T, k).indices for s in range(0, users, 1024)])
    _sync(device)
    return out.cpu(), users / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--items", type=int, default=512)
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
        res[d.type]["rank"] = rank(d)
    for name, unit in (("train fp32", "steps/s"), ("train bf16", "steps/s"), ("embed", "items/s"),
                       ("rank", "users/s")):
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
    print("\n| path | CPU | CUDA | speed-up | unit | check |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
