"""The item-encoder contract: text (+ image) of a batch of items -> one float32 vector each.

An encoder reports `settings()`: everything that determines its vectors (model weights fingerprint, prompt,
pooling, dtype, ...). The embedding store keys its cache by the hash of these settings, so changing any of them
starts a fresh cache, while speed-only knobs (batch size, device, threads) are left out and keep it valid.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from molar_core.errors import MolarError


class EncoderError(MolarError):
    """An encoder cannot be built or run: the message names the setting (embed.X) or model to fix."""


@dataclass
class EncoderConfig:
    """What `build_encoder` needs; mirrors the `embed` params section (the library never imports the pipeline)."""

    encoder: str = "sentence"  # sentence | mllm
    model: str | None = None  # local dir, HF id, "tiny" (mllm: build a tiny random Qwen2-VL); None = default
    revision: str | None = None
    backend: str = "auto"  # auto (vllm for mllm where installed) | transformers | vllm
    fallback_to_transformers: bool = False
    prompt: str = "Compress the text and image into embedding. Item information: {text}. Item Image: <image>"
    prompt_text_only: str = "Compress the text into embedding. Item information: {text}."
    summary_token: str = "<|endoftext|>"
    pooling: str | None = None  # last | mean; None = the encoder's default (mllm: last, sentence: mean)
    normalize: bool | None = None  # L2; None = the encoder's default (sentence: true, mllm: false)
    max_pixels: int = 28 * 28
    use_images: bool = True  # false: every item is encoded from its text alone (the text-only ablation)
    max_image_pixels: int = 50_000_000
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    batch_size: int = 32
    max_text_tokens: int = 256
    device: str = "auto"
    threads: int = 0
    padding_side: str = "left"  # left | right: the result must not depend on it (tests check both)
    trust_remote_code: bool = False  # run a model repository's own Python code: only when a param says so
    vllm_memory_gib: float = 1.0  # vLLM on CPU: KV-cache space (GiB); pooling needs little


@dataclass
class EncodeCounts:
    """What happened to the items an encoder saw: images used, why others were text-only, truncations."""

    items: int = 0
    image_used: int = 0
    text_only: int = 0  # no image at all, or the encoder does not read images
    image_rejected: Counter = field(default_factory=Counter)  # reason -> items whose image was unusable
    image_converted: Counter = field(default_factory=Counter)  # source mode -> images converted to RGB
    truncated: int = 0

    def as_dict(self) -> dict:
        return {"items": self.items, "image_used": self.image_used, "text_only": self.text_only,
                "image_rejected": dict(sorted(self.image_rejected.items())),
                "image_converted": dict(sorted(self.image_converted.items())), "truncated": self.truncated}

    def add(self, other: EncodeCounts) -> None:
        """Fold in the counts of another encoder's work (an actor of a pool): every field, whatever it holds."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Counter):
                value.update(getattr(other, f.name))
            else:
                setattr(self, f.name, value + getattr(other, f.name))

    @property
    def without_image(self) -> int:
        return self.text_only + sum(self.image_rejected.values())


class ItemEncoder(ABC):
    """Turns items into vectors. Subclasses set `name`, `dim` and `counts`, and implement `encode`."""

    name: str
    dim: int
    counts: EncodeCounts
    backend_note: str | None = None  # set when the backend asked for is not the one used (and why)
    last_image_used: list[bool]  # per item of the last encode call: was its image read

    @abstractmethod
    def settings(self) -> dict:
        """Every setting that changes the vectors (recorded in the manifest and hashed into settings_hash)."""

    @abstractmethod
    def encode(self, texts: list[str], image_paths: list[str | None]) -> torch.Tensor:
        """(len(texts), dim) float32 on the CPU; image_paths[i] is None for a text-only item.

        Also sets `last_image_used` and adds to `counts`."""

    def runtime(self) -> dict:
        """Speed-only facts (device, dtype in use, threads): recorded, never hashed."""
        return {}

    def _init_identity(self, cfg: EncoderConfig, model_name: str, fingerprint: str, backend: str,
                       default_pooling: str, default_normalize: bool) -> None:
        """What every encoder records about itself; pooling and normalisation fall back to its defaults."""
        self.cfg = cfg
        self.model_name = model_name
        self.fingerprint = fingerprint
        self.backend = backend
        self.pooling = cfg.pooling or default_pooling
        self.normalize = bool(cfg.normalize) if cfg.normalize is not None else default_normalize
        self.counts = EncodeCounts()


def settings_hash(settings: dict) -> str:
    """sha256 of the canonical JSON of the settings: equal settings, equal hash, on any machine."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


_SKIP = {"README.md", ".gitattributes"}
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "merges.txt"]  # never pickled weights


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over every file of a model directory (names and contents): the weights' identity.

    The location is deliberately not part of it, so a model moved to another path or machine keeps its cache.
    """
    root = Path(model_dir)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in _SKIP
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise EncoderError(f"{root}: model directory is empty")
    for p in files:
        fh = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                fh.update(block)
        h.update(f"{p.relative_to(root).as_posix()}\0{fh.hexdigest()}\n".encode())
    return h.hexdigest()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise EncoderError(f"embed.device: {device!r} is not a torch device ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError(f"embed.device is {device!r} but no CUDA device is available (use auto or cpu)")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """float16 is refused on the CPU: matmuls there run about 100x slower than float32."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise EncoderError(f"embed.dtype: {dtype!r} is not one of {sorted(table)} or auto")
    if table[dtype] is torch.float16 and device.type == "cpu":
        raise EncoderError("embed.dtype is float16 but the device is the CPU, where float16 matmuls are ~100x "
                           "slower: use float32 or bfloat16 (or auto)")
    return table[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool (B, L, H) hidden states over real tokens: `last` = the last real token, `mean` = their mean.

    Works under left and right padding because it reads positions from the mask, never from the length.
    Padded positions may hold NaN (fully masked attention rows), so they are excluded with where, not a product.
    """
    m = mask.bool()
    if how == "last":
        pos = torch.arange(m.shape[1], device=m.device).expand_as(m)
        last = torch.where(m, pos, -1).max(dim=1).values
        if (last < 0).any():
            raise EncoderError("an item has no tokens to pool (empty input)")
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if how == "mean":
        summed = torch.where(m.unsqueeze(-1), hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
        return summed.sum(dim=1) / m.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)
    raise EncoderError(f"embed.pooling: {how!r} is not one of last, mean")


def locate_model(model: str, revision: str | None, param: str = "embed.model") -> Path:
    """A local model directory for `model`: the directory itself, or the Hugging Face hub's snapshot of an id.

    Offline, an id resolves only when the hub cache already holds it; otherwise the error says what to do.
    """
    p = Path(model).expanduser()
    if p.is_dir():
        return p.resolve()
    if p.exists():
        raise EncoderError(f"{param}: {model!r} is a file, not a model directory")
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_like_path:
        raise EncoderError(f"{param}: directory {model!r} not found")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, allow_patterns=HUB_FILES))
    except Exception as err:  # noqa: BLE001  network, auth and missing-repo errors all mean "not available"
        msg = str(err).splitlines()[0] if str(err) else ""
        raise EncoderError(f"{param}: {model!r} is not a local directory and the Hugging Face hub could not "
                           f"provide it ({type(err).__name__}: {msg}). Give a local model directory "
                           "(e.g. one saved with save_pretrained)") from None
