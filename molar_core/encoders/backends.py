"""Which inference backend computes the vectors: transformers (always installed) or vLLM (an optional extra).

vLLM is the fast path on GPUs and has a CPU build, but it is a multi-GB install that this project does not
require. Asking for it where it is missing is answered plainly: why it is unavailable, and a fallback only when
the params allow it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from molar_core.encoders.base import EncoderError

BACKENDS = ("auto", "transformers", "vllm")


@dataclass
class BackendChoice:
    requested: str
    used: str
    note: str | None = None  # why `used` differs from `requested`


def vllm_unavailable_reason() -> str | None:
    """None when vLLM imports; otherwise the reason (the import error, one line)."""
    try:
        importlib.import_module("vllm")
    except Exception as err:  # noqa: BLE001  any failure to import means "unavailable", with its reason
        return f"`import vllm` failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
    return None


def choose_backend(requested: str, fallback_to_transformers: bool, encoder: str = "mllm") -> BackendChoice:
    """`auto`: vLLM for the mllm encoder where it imports, else transformers (the sentence encoder always)."""
    if requested not in BACKENDS:
        raise EncoderError(f"embed.backend: {requested!r} is not one of {', '.join(BACKENDS)}")
    if requested == "auto":
        use = "vllm" if encoder == "mllm" and vllm_unavailable_reason() is None else "transformers"
        return BackendChoice(requested, use)
    if requested == "transformers":
        return BackendChoice(requested, "transformers")
    reason = vllm_unavailable_reason()
    if reason is None:
        return BackendChoice(requested, "vllm")
    if fallback_to_transformers:
        return BackendChoice(requested, "transformers", f"vllm unavailable ({reason}); using transformers "
                                                        "because embed.fallback_to_transformers is true")
    raise EncoderError(f"embed.backend is vllm but it is unavailable: {reason}. Install it (pip install -e "
                       "'.[vllm]' on a GPU machine; the CPU recipe is in README.md), set embed.backend: "
                       "transformers, or embed.fallback_to_transformers: true to fall back automatically")
