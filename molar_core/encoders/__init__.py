"""Item encoders: text (+ image) -> one vector per item (sentence encoder, Qwen2-VL family, tiny test models)."""

from molar_core.encoders.base import EncodeCounts, EncoderConfig, EncoderError, ItemEncoder, settings_hash
from molar_core.encoders.factory import build_encoder

__all__ = ["EncodeCounts", "EncoderConfig", "EncoderError", "ItemEncoder", "build_encoder", "settings_hash"]
