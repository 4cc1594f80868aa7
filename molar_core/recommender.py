"""A trained model as a recommender in Python, for any history: a new user's, a session's, or a known user's.

`load(model_dir)` rebuilds the model from its directory alone (config.json, model.safetensors and, for content
models, the item features of the embedding store recorded in config.json), so recommendations need no retraining
and no prepared data. A history is encoded exactly as the training stages encoded the saved user vectors (last
max_len items, left padding, eval mode, scoring form), and the whole catalogue is ranked exactly in torch.

Item ids are the prepared ids 1..N of the catalogue the model was trained on: an item outside it has no vector.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from molar_core.checkpoint import Checkpoint, open_checkpoint
from molar_core.errors import ArtifactError
from molar_core.models.content import ContentConfig, ContentUserModel
from molar_core.models.molar import scoring_form
from molar_core.models.sasrec import load_sasrec
from molar_core.ranking import score_blocks
from molar_core.store import load_item_embeddings
from molar_core.training import encode_users
from molar_core.vectors import load_tensors

# Recomputed item vectors may differ from the saved ones by float rounding (another device or thread count); a
# different model or embedding store differs by far more, so this only separates the two.
SAVED_VECTORS_RTOL, SAVED_VECTORS_ATOL = 1e-3, 1e-4


class Recommender:
    """A reloaded user model with its catalogue's item vectors (scoring form), in eval mode on the CPU."""

    def __init__(self, checkpoint: Checkpoint, model: nn.Module, rec_loss: str | None, max_len: int,
                 items: torch.Tensor):
        self.checkpoint = checkpoint
        self.model = model.eval()
        self.rec_loss = rec_loss  # None: SASRec (dot product of its raw vectors)
        self.max_len = max_len
        self._items = items

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def num_items(self) -> int:
        return self._items.shape[0]

    def _check(self, history: Sequence[int], which: str = "history") -> list[int]:
        """Prepared item ids of a history, refused when empty or outside 1..N (no vector to read)."""
        ids = [operator.index(x) for x in history]
        if not ids:
            raise ValueError(f"{which} is empty: a user vector needs at least one item")
        for pos, x in enumerate(ids):
            if not 1 <= x <= self.num_items:
                raise ValueError(f"item id {x} ({which}, position {pos}) is not in the catalogue of {self.name}: "
                                 f"prepared ids are 1..{self.num_items}")
        return ids

    def _check_many(self, histories: Sequence[Sequence[int]]) -> list[list[int]]:
        many = len(histories) > 1
        return [self._check(h, f"history {i}" if many else "history") for i, h in enumerate(histories)]

    @torch.no_grad()
    def _encode(self, histories: list[list[int]]) -> torch.Tensor:
        user_fn: Callable[[torch.Tensor], torch.Tensor] = self.model.user_vectors
        return _scoring(encode_users(user_fn, histories, self.max_len, torch.device("cpu")), self.rec_loss)

    def user_vector(self, history: Sequence[int]) -> torch.Tensor:
        """The user vector (D,) after `history` (oldest first), as the saved user vectors were computed."""
        return self._encode([self._check(history)])[0]

    def user_vectors(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """User vectors (B, D) of many histories, encoded in batches."""
        return self._encode(self._check_many(histories))

    def item_vectors(self) -> torch.Tensor:
        """Scoring vectors (N, D) of items 1..N (row i is item i+1), as saved in item_vectors.safetensors."""
        return self._items.clone()

    def recommend(self, history: Sequence[int], k: int = 10, exclude_seen: bool = True) -> list[tuple[int, float]]:
        """Top-k (item id, score) over the whole catalogue, best first (ties: lower id first)."""
        return self.recommend_many([history], k, exclude_seen)[0]

    def recommend_many(self, histories: Sequence[Sequence[int]], k: int = 10,
                       exclude_seen: bool = True) -> list[list[tuple[int, float]]]:
        """recommend() for many histories, scored in blocks of users; fewer than k items when fewer remain."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        checked = self._check_many(histories)
        users = self._encode(checked)
        out: list[list[tuple[int, float]]] = []
        for _, scores in score_blocks(users, self._items, checked if exclude_seen else None):
            # a stable sort keeps equal scores (items with identical vectors) in id order
            values, order = torch.sort(scores, dim=1, descending=True, stable=True)
            values, order = values[:, :k], order[:, :k]
            for vals, idx in zip(values.tolist(), order.tolist()):
                out.append([(i + 1, v) for i, v in zip(idx, vals) if v != float("-inf")])
        return out


def load(model_dir: str | Path, embeddings_dir: str | Path | None = None, rebuild: str | None = None) -> Recommender:
    """A Recommender from a model directory written by train_id (SASRec) or train (content, Molar, hybrid).

    A content model reads the item features of the embedding store its config.json records (relative to the
    workspace holding the model directory, model_dir/../..), or of `embeddings_dir`. A checkpoint of another
    format, a missing file, or item features other than the ones it was trained on are refused (ArtifactError
    naming the file and `rebuild`, by default the command the pipeline rebuilds the model with)."""
    model_dir = Path(model_dir)
    hint = rebuild or _retrain_command(model_dir.name)
    ckpt = open_checkpoint(model_dir, hint)
    hint = rebuild or _retrain_command(ckpt.name)
    ckpt.rebuild = hint
    conf, conf_path = ckpt.config, model_dir / "config.json"
    if "config" in conf:
        model = load_sasrec(model_dir, hint)
        rec_loss, max_len, source = None, model.cfg.max_len, model_dir / "model.safetensors"
    elif "content_config" in conf:
        try:
            ccfg = ContentConfig(**conf["content_config"])
            rec_loss = str(conf["loss_config"]["rec_loss"])
            store = Path(conf["item_features"]["store"])
        except (KeyError, TypeError) as err:
            raise ArtifactError(str(conf_path), f"incomplete content model config ({err!r})", hint) from None
        source = Path(embeddings_dir) if embeddings_dir is not None else model_dir.resolve().parent.parent / store
        model = ContentUserModel(ccfg, _item_features(source, ccfg, model_dir, hint))
        _load_content_weights(model, model_dir / "model.safetensors", hint)
        max_len = ccfg.max_len
    else:
        raise ArtifactError(str(conf_path), "neither a SASRec (`config`) nor a content model (`content_config`)",
                            hint)
    model.eval()
    with torch.no_grad():
        items = _scoring(model.item_vectors().detach().float(), rec_loss)
    _check_saved_items(items, ckpt, source)
    return Recommender(ckpt, model, rec_loss, max_len, items)


def _scoring(vectors: torch.Tensor, rec_loss: str | None) -> torch.Tensor:
    """Vectors in scoring form: SASRec's as they are (rec_loss None), a content model's as its loss scores."""
    return vectors if rec_loss is None else scoring_form(vectors, rec_loss)


def _retrain_command(name: str) -> str:
    """The command that retrains a model directory of this name (SASRec: train_id; every other: train@NAME)."""
    return "dvc repro train_id" if name == "sasrec" else f"dvc repro train@{name}"


def _item_features(store: Path, cfg: ContentConfig, model_dir: Path, rebuild: str) -> torch.Tensor:
    """The store's item features (N, input_dim), refused unless they have the shape the model was trained on."""
    ids, feats = load_item_embeddings(store)
    n, d = feats.shape
    if (n, d) != (cfg.num_items, cfg.input_dim) or not torch.equal(ids.to(torch.int64), torch.arange(1, n + 1)):
        raise ArtifactError(str(store), f"has {n} item vectors of width {d}, but {model_dir} was trained on "
                            f"{cfg.num_items} items (ids 1..N) of width {cfg.input_dim}: not the embedding store it "
                            "was trained with (give that one as embeddings_dir)", rebuild)
    return feats


def _load_content_weights(model: ContentUserModel, path: Path, rebuild: str) -> None:
    """The content model's weights (content.* of the training state; the alignment head and the ID model only
    shape training, never a content model's user or item vectors)."""
    state = {k.removeprefix("content."): v for k, v in load_tensors(path, rebuild).items() if k.startswith("content.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(str(path), f"incompatible checkpoint (missing {missing}, unexpected {unexpected})", rebuild)


def _check_saved_items(items: torch.Tensor, ckpt: Checkpoint, source: Path) -> None:
    """The reloaded model must give the item vectors it was saved with: same-shaped features from another store
    (or another model's weights) would otherwise rank silently wrong."""
    saved = torch.from_numpy(ckpt.item_vectors())
    if items.shape != saved.shape or not torch.allclose(items, saved, rtol=SAVED_VECTORS_RTOL,
                                                        atol=SAVED_VECTORS_ATOL):
        diff = (items - saved).abs().max().item() if items.shape == saved.shape else float("nan")
        raise ArtifactError(str(source), f"gives item vectors other than {ckpt.path / 'item_vectors.safetensors'} "
                            f"(largest difference {diff:.3g}): not what {ckpt.path} was trained with", ckpt.rebuild)
