"""What a fine-tuned encoder directory records about the vectors it was trained for, and the check `embed` runs.

A model fine-tuned with one prompt, pooling or image size and then used with another would silently compute
vectors it was never trained to make; the directory's molar_finetune.json lets the encoder refuse that.
"""

from __future__ import annotations

import json
from pathlib import Path

from molar_core.encoders.base import EncoderConfig, EncoderError

FINETUNE_FILE = "molar_finetune.json"
RECORDED = ("prompt", "prompt_text_only", "summary_token", "use_images", "max_pixels", "max_text_tokens")


def recorded_settings(cfg: EncoderConfig, pooling: str) -> dict:
    return {**{k: getattr(cfg, k) for k in RECORDED}, "pooling": pooling}


def check_recorded(model_dir: Path, cfg: EncoderConfig, pooling: str) -> None:
    """Refuse a directory written by finetune_encoder with init none, or trained for other embed settings."""
    path = Path(model_dir) / FINETUNE_FILE
    if not path.exists():
        return
    record = json.loads(path.read_text())
    if record.get("init") == "none":
        raise EncoderError(f"embed.model {cfg.model!r} is finetune_encoder's output, but that stage is off "
                           "(finetune_encoder.init: none): set finetune_encoder.init to scratch or pretrained "
                           "and run `dvc repro finetune_encoder`, or point embed.model elsewhere")
    now = recorded_settings(cfg, pooling)
    for key, value in record.get("settings", {}).items():
        if now.get(key) != value:
            raise EncoderError(f"embed.{key} is {now.get(key)!r} but the encoder in {model_dir} was fine-tuned "
                               f"with {value!r}: set embed.{key} back, or rerun `dvc repro finetune_encoder`")
