"""Item vectors from a Qwen2-VL-family vision-language model (the Molar item encoder).

This module is the front end shared by both backends (prompt rendering, text truncation, image checks and
counts) and the transformers backend; molar_core.encoders.vllm_backend computes the same vectors with vLLM.

Each item becomes one chat turn: the prompt with its text (and its image where it has a usable one), then a
summary token; the vector is the last layer's hidden state at that final token (`last`, the paper's choice;
`mean` pools all real tokens). Pooling reads positions from the attention mask and position ids are computed
explicitly, so left and right padding give the same vectors as encoding each item alone.
"""

from __future__ import annotations

from pathlib import Path

import torch

from molar_core.encoders.base import (
    EncoderConfig,
    EncoderError,
    ItemEncoder,
    dtype_name,
    pool,
    resolve_device,
    resolve_dtype,
)
from molar_core.encoders.finetuned_dir import check_recorded
from molar_core.encoders.images import LoadedImage, load_image

CHAT = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{summary}"  # Qwen chat turn, no system prompt
VISION = "<|vision_start|><|image_pad|><|vision_end|>"
NEEDED_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
SUPPORTED = ("qwen2_vl", "qwen2_5_vl")


def _processor_class():
    """Qwen2VLProcessor without a video processor: that one needs torchvision, which cannot be imported beside
    the CPU build of torch here, and items have no video."""
    from transformers.models.qwen2_vl import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None and "video" in argument_name:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyQwen2VLProcessor


class MllmEncoder(ItemEncoder):
    name = "mllm"

    def __init__(self, cfg: EncoderConfig, model_dir: Path, model_name: str, fingerprint: str, backend: str):
        from transformers import AutoConfig, AutoTokenizer
        from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        self._init_identity(cfg, model_name, fingerprint, backend, default_pooling="last", default_normalize=False)
        self._smart_resize = smart_resize
        self._check_prompts(cfg)
        check_recorded(model_dir, cfg, self.pooling)

        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
        if config.model_type not in SUPPORTED:
            raise EncoderError(f"embed.model {model_name!r}: model type {config.model_type!r} is not a Qwen2-VL "
                               f"family model ({', '.join(SUPPORTED)}); use encoder: sentence for text models")
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        text_cfg = config.get_text_config()
        vis_cfg = config.vision_config
        self.dim = int(text_cfg.hidden_size)
        self.context = int(text_cfg.max_position_embeddings)

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
        self.tokenizer.padding_side = cfg.padding_side
        vocab = self.tokenizer.get_vocab()
        for tok in (*NEEDED_TOKENS, cfg.summary_token):
            if tok not in vocab:
                what = "embed.summary_token" if tok == cfg.summary_token else "the Qwen2-VL chat format"
                raise EncoderError(f"embed.model {model_name!r}: its tokenizer has no single token {tok!r} "
                                   f"(needed by {what})")
        self.factor = int(vis_cfg.patch_size) * int(vis_cfg.spatial_merge_size)
        self.min_pixels = min(56 * 56, cfg.max_pixels)
        if cfg.max_pixels < self.factor * self.factor:
            raise EncoderError(f"embed.max_pixels ({cfg.max_pixels}) is below one visual token "
                               f"({self.factor}x{self.factor} = {self.factor ** 2} px)")
        ip_args = {"max_pixels": cfg.max_pixels, "min_pixels": self.min_pixels, "patch_size": int(vis_cfg.patch_size),
                   "merge_size": int(vis_cfg.spatial_merge_size),
                   "temporal_patch_size": int(getattr(vis_cfg, "temporal_patch_size", 2))}
        if (model_dir / "preprocessor_config.json").exists():
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir, **ip_args)
        else:
            image_processor = Qwen2VLImageProcessorPil(**ip_args)
        self.processor = _processor_class()(image_processor=image_processor, tokenizer=self.tokenizer,
                                            video_processor=None)
        self._strip = sorted(set(self.tokenizer.all_special_tokens) | set(NEEDED_TOKENS) | {"<|video_pad|>"},
                             key=len, reverse=True)
        overhead = len(self.tokenizer(self._render("", True), add_special_tokens=False)["input_ids"])
        max_image_tokens = cfg.max_pixels // self.factor ** 2
        if overhead + cfg.max_text_tokens + max_image_tokens > self.context:
            raise EncoderError(f"embed.max_text_tokens ({cfg.max_text_tokens}) + prompt ({overhead}) + image tokens "
                               f"({max_image_tokens}) exceed the model's context of {self.context} tokens")
        self.max_prompt_tokens = overhead + cfg.max_text_tokens + max_image_tokens
        self._load(model_dir)

    def _load(self, model_dir: Path) -> None:
        """The transformers backend: the model without its LM head (only hidden states are needed)."""
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=self.dtype, use_safetensors=True,
                                                            trust_remote_code=self.cfg.trust_remote_code)
        model.eval().to(self.device)
        self.model = model  # the LM head is used only by fine-tuning's generative objective
        self.backbone = model.model

    @staticmethod
    def _check_prompts(cfg: EncoderConfig) -> None:
        if "{text}" not in cfg.prompt or cfg.prompt.count("<image>") != 1:
            raise EncoderError("embed.prompt must contain {text} once and <image> once, e.g. "
                               "'... Item information: {text}. Item Image: <image>'")
        if "{text}" not in cfg.prompt_text_only or "<image>" in cfg.prompt_text_only:
            raise EncoderError("embed.prompt_text_only must contain {text} and no <image> (items without an image)")

    def settings(self) -> dict:
        c = self.cfg
        return {"encoder": self.name, "model_fingerprint": self.fingerprint, "backend": self.backend,
                "chat": CHAT, "prompt": c.prompt, "prompt_text_only": c.prompt_text_only,
                "summary_token": c.summary_token, "pooling": self.pooling, "normalize": self.normalize,
                "use_images": c.use_images, "max_pixels": c.max_pixels, "min_pixels": self.min_pixels,
                "max_image_pixels": c.max_image_pixels,
                "max_text_tokens": c.max_text_tokens, "dtype": dtype_name(self.dtype), "dim": self.dim}

    def runtime(self) -> dict:
        return {"device": str(self.device), "batch_size": self.cfg.batch_size, "padding_side": self.cfg.padding_side,
                "threads": torch.get_num_threads(), "model": self.model_name}

    def _render(self, text: str, has_image: bool, summary: str | None = None) -> str:
        template = self.cfg.prompt.replace("<image>", VISION) if has_image else self.cfg.prompt_text_only
        summary = self.cfg.summary_token if summary is None else summary
        return CHAT.replace("{summary}", summary).replace("{prompt}", template.replace("{text}", text))

    def prepare_texts(self, texts: list[str]) -> list[str]:
        """Item texts as encode() feeds them to the model: markup removed, truncated to max_text_tokens."""
        return self._truncate([self._clean(t) for t in texts])

    def _clean(self, text: str) -> str:
        """Special-token strings inside item text would be read as markup (e.g. fake image slots): remove them."""
        for tok in self._strip:
            if tok in text:
                text = text.replace(tok, "")
        return text

    def _truncate(self, texts: list[str]) -> list[str]:
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        out = []
        for text, toks in zip(texts, ids):
            if len(toks) > self.cfg.max_text_tokens:
                self.counts.truncated += 1
                text = self.tokenizer.decode(toks[: self.cfg.max_text_tokens])
            out.append(text)
        return out

    def usable_image(self, path: str | None) -> LoadedImage:
        """The image at `path` if this encoder can use it; else None and the reason (no_image, unprocessable...).
        With `use_images: false` every item is text-only (reason no_image)."""
        got = load_image(path if self.cfg.use_images else None, self.cfg.max_image_pixels)
        if got.image is not None and not self._image_ok(got.image):
            got.image, got.reason = None, "unprocessable"
        return got

    def _image_ok(self, im) -> bool:
        try:
            self._smart_resize(im.height, im.width, factor=self.factor, min_pixels=self.min_pixels,
                               max_pixels=self.cfg.max_pixels)
            return True
        except ValueError:
            return False

    @torch.inference_mode()
    def encode(self, texts: list[str], image_paths: list[str | None]) -> torch.Tensor:
        if len(texts) != len(image_paths):
            raise ValueError("texts and image_paths differ in length")
        images = []
        for path in image_paths:
            got = self.usable_image(path)
            im = got.image
            if im is None:
                if got.reason == "no_image":
                    self.counts.text_only += 1
                else:
                    self.counts.image_rejected[got.reason] += 1
            else:
                self.counts.image_used += 1
                if got.converted_from:
                    self.counts.image_converted[got.converted_from] += 1
            images.append(im)
        self.counts.items += len(texts)
        self.last_image_used = [im is not None for im in images]
        clean = self.prepare_texts(texts)
        prompts = [self._render(t, im is not None) for t, im in zip(clean, images)]
        # similar lengths share a batch (less padding); image items together
        order = sorted(range(len(prompts)), key=lambda i: (images[i] is not None, len(prompts[i])), reverse=True)
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        bs = self.batch_size()
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            out[idx] = self._forward([prompts[i] for i in idx], [images[i] for i in idx])
        return out

    def batch_size(self) -> int:
        return self.cfg.batch_size

    def _forward(self, prompts: list[str], images: list) -> torch.Tensor:
        return self.pooled(prompts, images).cpu()

    def model_inputs(self, prompts: list[str], images: list) -> dict[str, torch.Tensor]:
        """Processor output on the model's device, with explicit multimodal position ids (padding-proof)."""
        imgs = [im for im in images if im is not None]
        inputs = self.processor(text=prompts, images=imgs or None, padding=True, return_tensors="pt")
        return self.with_positions({k: v.to(self.device) for k, v in inputs.items()})

    def with_positions(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Model inputs plus explicit multimodal position ids, read from the attention mask (padding-proof)."""
        inputs["position_ids"], _ = self.backbone.get_rope_index(
            input_ids=inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"), attention_mask=inputs["attention_mask"])
        self.backbone.rope_deltas = None  # no generation follows: never let one batch's deltas reach the next
        return inputs

    def pooled(self, prompts: list[str], images: list) -> torch.Tensor:
        """Item vectors of rendered prompts on the model's device; differentiable outside encode()'s
        inference mode, which is how fine-tuning trains exactly the vectors `embed` will compute."""
        inputs = self.model_inputs(prompts, images)
        hidden = self.backbone(**inputs, use_cache=False).last_hidden_state
        vec = pool(hidden.float(), inputs["attention_mask"], self.pooling)
        if self.normalize:
            vec = torch.nn.functional.normalize(vec, dim=-1)
        return vec
