"""DVC stage `index`: a FAISS index over each model's item vectors."""

from __future__ import annotations

from pathlib import Path

from molar_core.index import build_index, save_index
from molar_core.io import runtime_info, sha256_file, write_json_atomic
from pipeline import paths
from pipeline.params import IndexParams, Params
from pipeline.readers import open_trained, read_stats
from stages.common import params_from_argv, run_main, summary


def run(p: IndexParams, root: Path = Path(".")) -> dict:
    stats = read_stats(root)
    infos = {}
    for model in p.models:
        ckpt = open_trained(root, model, stats)
        src = ckpt.path / "item_vectors.safetensors"
        index, info = build_index(ckpt.item_vectors(), p.factory, p.train_sample, p.nprobe, p.use_gpu,
                                  ef_search=p.ef_search, refine_k_factor=p.refine_k_factor)
        out = root / paths.INDEX_DIR
        save_index(index, out / f"{model}.faiss")
        info.update({"model": model, "item_vectors": str(src.relative_to(root)), "item_vectors_sha256": sha256_file(src),
                     "row_to_item_id": "row + 1", "runtime": runtime_info()})
        write_json_atomic(out / f"{model}.json", info)
        infos[model] = info
        summary("index", f"{model}: {p.factory} over {info['ntotal']:,} x {info['dim']} "
                f"({'GPU' if info['built_on_gpu'] else 'CPU'}, {info['build_seconds']:.2f}s)")
    return infos


def main(params: Params | None = None) -> None:
    """`python -m stages.index [params.yaml]`, or `molar` with params it has already validated."""
    params = params or params_from_argv()
    run(params.index)


if __name__ == "__main__":
    run_main(main)
