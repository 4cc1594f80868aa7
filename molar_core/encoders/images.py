"""Load an item image for an encoder without ever crashing the run.

Catalogue images are untrusted: missing, empty, truncated, not images at all, CMYK, 16-bit, palette with
transparency, or decompression bombs. Usable ones are converted to 8-bit RGB (and counted by source mode);
unusable ones make the item text-only and are counted by reason.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_ASPECT = 200  # Qwen2-VL's smart_resize refuses more extreme aspect ratios


@dataclass
class LoadedImage:
    image: Image.Image | None
    reason: str | None = None  # why image is None
    converted_from: str | None = None  # source mode when the image was converted to RGB


def _to_rgb(im: Image.Image) -> tuple[Image.Image, str | None]:
    mode = im.mode
    if mode == "RGB":
        return im, None
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0  # full 16-bit range onto 0..255
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        gray = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB"), mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), mode
    return im.convert("RGB"), mode  # CMYK, YCbCr, LAB, HSV, L, 1, P


def load_image(path: str | Path | None, max_image_pixels: int) -> LoadedImage:
    """An 8-bit RGB image, or None with the reason (no_image, missing, empty_file, not_an_image,
    too_many_pixels, extreme_aspect_ratio, unreadable)."""
    if path is None:
        return LoadedImage(None, "no_image")
    p = Path(path)
    try:
        if not p.is_file():
            return LoadedImage(None, "missing")
        if p.stat().st_size == 0:
            return LoadedImage(None, "empty_file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size  # from the header: no pixel is decoded before the size check
                if w <= 0 or h <= 0:
                    return LoadedImage(None, "unreadable")
                if w * h > max_image_pixels:
                    return LoadedImage(None, "too_many_pixels")
                if max(w, h) / min(w, h) > MAX_ASPECT:
                    return LoadedImage(None, "extreme_aspect_ratio")
                im.seek(0)
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb, converted = _to_rgb(im)
                rgb.load()
                return LoadedImage(rgb.copy() if rgb is im else rgb, None, converted)
    except UnidentifiedImageError:
        return LoadedImage(None, "not_an_image")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return LoadedImage(None, "too_many_pixels")
    except Exception:  # noqa: BLE001  truncated/corrupt data raises many types (OSError, SyntaxError, ...)
        return LoadedImage(None, "unreadable")
