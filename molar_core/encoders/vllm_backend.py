"""The vLLM backend of the `mllm` encoder: the same prompts, images and pooling, computed by vLLM's pooling runner.

Everything that decides *what* is encoded (chat rendering, text cleaning and truncation, image checks and their
counts) is inherited from MllmEncoder, so the two backends differ only in the forward pass. vLLM resizes images
itself: it gets the same min/max pixels through `mm_processor_kwargs`, and pools the last (or mean) hidden state
without normalisation, so its vectors equal the transformers backend's (tests/test_vllm_parity.py).

vLLM starts worker processes: a script that builds this encoder needs an `if __name__ == "__main__":` guard
(DVC stages have one). On a CPU, vLLM's KV cache is sized by VLLM_CPU_KVCACHE_SPACE (GiB, from
`embed.vllm_memory_gib`) and it reserves no core for itself here (VLLM_CPU_NUM_OF_RESERVED_CPU=0).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from molar_core.encoders.base import EncoderError, dtype_name
from molar_core.encoders.mllm import MllmEncoder


class VllmMllmEncoder(MllmEncoder):
    def _load(self, model_dir: Path) -> None:
        if self.device.type == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(self.cfg.vllm_memory_gib))))
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        try:
            from vllm import LLM
            from vllm.config import PoolerConfig
        except ImportError as err:  # choose_backend checked this; a broken install still gets a clear message
            raise EncoderError(f"embed.backend vllm: cannot import vllm ({err})") from None
        self.llm = LLM(
            model=str(model_dir), runner="pooling", dtype=dtype_name(self.dtype), seed=0,
            max_model_len=self.max_prompt_tokens + 8, trust_remote_code=self.cfg.trust_remote_code,
            mm_processor_kwargs={"min_pixels": self.min_pixels, "max_pixels": self.cfg.max_pixels},
            limit_mm_per_prompt={"image": 1},
            pooler_config=PoolerConfig(pooling_type=self.pooling.upper(), use_activation=False),
            enforce_eager=True,
        )

    def batch_size(self) -> int:
        return 1 << 30  # vLLM batches by its own memory budget: hand it everything at once

    def runtime(self) -> dict:
        import vllm

        return {**super().runtime(), "vllm": vllm.__version__}

    def _forward(self, prompts: list[str], images: list) -> torch.Tensor:
        from vllm import PoolingParams

        requests = [{"prompt": p, "multi_modal_data": {"image": im}} if im is not None else {"prompt": p}
                    for p, im in zip(prompts, images)]
        outputs = self.llm.embed(requests, use_tqdm=False, pooling_params=PoolingParams(use_activation=False))
        vec = torch.tensor([o.outputs.embedding for o in outputs], dtype=torch.float32)
        if self.normalize:
            vec = torch.nn.functional.normalize(vec, dim=-1)
        return vec
