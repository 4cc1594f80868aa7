"""A trained model as a recommender in Python, for any history: a new user's, a session's, or a known user's.

`load(model_dir)` rebuilds the model from its directory alone (config.json, model.safetensors and, for content
models, the item features of the embedding store recorded in config.json), so recommendations need no retraining
and no prepared data. A history is encoded exactly as the training stages encoded the saved user vectors (last
max_len items, left padding, eval mode, scoring form), and the whole catalogue (or the `candidates` given) is
ranked exactly in torch.

`molar recommend` ranks through a Recommender in every mode (the command's docstring says where its `--all` batch
path searches a FAISS index with user_vectors() instead of ranking with recommend_many), and so do the report's
gallery and `molar inspect index`.

Item ids are the prepared ids 1..N of the catalogue the model was trained on. A content model (content, Molar,
hybrid) also scores items it was not trained on from their encoder features (`encode_items`, `add_items`): they
take ids N+1.., and the items `molar add-items` added (molar_core.added_items) are loaded with the model. SASRec
has a learned vector per trained id only, so it cannot.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from molar_core.added_items import AddedItems, added_items_dir, read_added_items
from molar_core.checkpoint import Checkpoint, open_checkpoint
from molar_core.errors import ArtifactError, MolarError
from molar_core.models.content import ContentConfig, ContentUserModel
from molar_core.models.molar import scoring_form
from molar_core.models.sasrec import load_sasrec
from molar_core.ranking import score_blocks
from molar_core.store import load_item_embeddings, open_manifest
from molar_core.training import encode_users
from molar_core.vectors import load_tensors

# Recomputed item vectors may differ from the saved ones by float rounding (another device or thread count); a
# different model or embedding store differs by far more, so this only separates the two.
SAVED_VECTORS_RTOL, SAVED_VECTORS_ATOL = 1e-3, 1e-4
SASREC_NEW_ITEMS = ("SASRec cannot score items it was not trained on; use a content model (content, molar or a "
                    "hybrid variant): SASRec learned one vector per trained item id and has no content to compute "
                    "one from")


class Recommender:
    """A reloaded user model with its catalogue's item vectors (scoring form), in eval mode on the CPU: the N
    trained items, then any added ones (ids N+1..N+M)."""

    def __init__(self, checkpoint: Checkpoint, model: nn.Module, rec_loss: str | None, max_len: int,
                 items: torch.Tensor, added_features: torch.Tensor | None = None,
                 added_raw_ids: Sequence[str] = ()):
        self.checkpoint = checkpoint
        self.model = model.eval()
        self.rec_loss = rec_loss  # None: SASRec (dot product of its raw vectors)
        self.max_len = max_len
        self._items = items  # (N + M, D) scoring vectors
        self._trained = items.shape[0] - (0 if added_features is None else added_features.shape[0])
        self._added_features = added_features  # (M, input_dim) or None
        self.added_raw_ids: tuple[str, ...] = tuple(added_raw_ids)  # raw ids of items N+1..N+M
        self._table: torch.Tensor | None = None  # adapted vectors of all N + M items, built on first use

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def num_items(self) -> int:
        """Items ranked: the trained ones and the added ones."""
        return self._items.shape[0]

    @property
    def num_trained_items(self) -> int:
        return self._trained

    @property
    def scores_new_items(self) -> bool:
        """Whether items outside the training catalogue can be scored (content models: yes; SASRec: no)."""
        return isinstance(self.model, ContentUserModel)

    def catalogue(self) -> str:
        """The item ids this recommender ranks, in words (for messages): "prepared ids are 1..N[, added ids ..]"."""
        n, total = self._trained, self.num_items
        return f"prepared ids are 1..{n}" + (f", added ids {n + 1}..{total}" if total > n else "")

    def _check(self, history: Sequence[int], which: str = "history") -> list[int]:
        """Item ids of a history, refused when empty or outside the catalogue (no vector to read)."""
        ids = [operator.index(x) for x in history]
        if not ids:
            raise ValueError(f"{which} is empty: a user vector needs at least one item")
        for pos, x in enumerate(ids):
            if not 1 <= x <= self.num_items:
                raise ValueError(f"item id {x} ({which}, position {pos}) is not in the catalogue of {self.name}: "
                                 f"{self.catalogue()}")
        return ids

    def _check_many(self, histories: Sequence[Sequence[int]]) -> list[list[int]]:
        many = len(histories) > 1
        return [self._check(h, f"history {i}" if many else "history") for i, h in enumerate(histories)]

    @torch.no_grad()
    def _encode(self, histories: list[list[int]]) -> torch.Tensor:
        """Histories of trained items only go through the model as training encoded them; a history with an
        added item reads the adapted vectors of the whole catalogue (an added item's has no id embedding). Each
        history takes one path whatever its batch mates, so its vector does not depend on them."""
        cpu = torch.device("cpu")
        new = [i for i, h in enumerate(histories) if max(h) > self._trained]
        if not new:
            return _scoring(encode_users(self.model.user_vectors, histories, self.max_len, cpu), self.rec_loss)
        table = self._full_table()

        def with_added(seq: torch.Tensor) -> torch.Tensor:
            return self.model.hidden(seq, table)[:, -1]

        out = encode_users(with_added, [histories[i] for i in new], self.max_len, cpu)
        taken = set(new)
        old = [i for i in range(len(histories)) if i not in taken]
        if old:
            trained = encode_users(self.model.user_vectors, [histories[i] for i in old], self.max_len, cpu)
            merged = torch.empty(len(histories), out.shape[1])
            merged[new], merged[old] = out, trained
            out = merged
        return _scoring(out, self.rec_loss)

    def _full_table(self) -> torch.Tensor:
        if self._table is None:
            with torch.no_grad():
                self._table = torch.cat([self.model.item_table(), self.model.adapter(self._added_features)]).float()
        return self._table

    def user_vector(self, history: Sequence[int]) -> torch.Tensor:
        """The user vector (D,) after `history` (oldest first), as the saved user vectors were computed."""
        return self._encode([self._check(history)])[0]

    def user_vectors(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """User vectors (B, D) of many histories, encoded in batches."""
        return self._encode(self._check_many(histories))

    def item_vectors(self) -> torch.Tensor:
        """Scoring vectors (N + M, D) of the catalogue (row i is item i+1): rows 1..N as saved in the model's
        item_vectors.safetensors, then the added items'."""
        return self._items.clone()

    def encode_items(self, features: torch.Tensor) -> torch.Tensor:
        """Scoring vectors (M, D) of items from their cached encoder features (M, input_dim): the trained adapter,
        in the form item_vectors() has, so the features of trained item i give row i of item_vectors(). A hybrid
        model adds an id embedding that only trained items have: here the vector is the content part alone.
        SASRec refuses (MolarError): it has no content to score an item from."""
        if not self.scores_new_items:
            raise MolarError(SASREC_NEW_ITEMS)
        assert isinstance(self.model, ContentUserModel)
        width = self.model.cfg.input_dim
        f = torch.as_tensor(features)
        if f.ndim != 2 or f.shape[1] != width:
            raise ValueError(f"features of shape {tuple(f.shape)}: {self.name} reads item features of width {width} "
                             "(M, input_dim), made with the encoder settings of its embedding store")
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"features of rows {(~torch.isfinite(f).all(1)).nonzero().flatten().tolist()[:5]} "
                             "contain NaN or inf")
        with torch.no_grad():  # item_table()'s adapter, without the id embedding that only trained items have
            return _scoring(self.model.adapter(f.float()).float(), self.rec_loss)

    def add_items(self, features: torch.Tensor, raw_item_ids: Sequence[str]) -> Recommender:
        """A recommender whose catalogue also holds these items, ids num_items+1.. in the given order; this one is
        unchanged. Raw ids must be new among the added ones (a caller holding the prepared items checks them
        against the trained catalogue too: `molar add-items` does)."""
        raw = [str(r) for r in raw_item_ids]
        vectors = self.encode_items(features)
        if len(raw) != vectors.shape[0]:
            raise ValueError(f"{vectors.shape[0]} feature rows but {len(raw)} raw item ids")
        seen = {r: self._trained + i + 1 for i, r in enumerate(self.added_raw_ids)}
        for pos, r in enumerate(raw):
            if r in seen:
                where = "the catalogue" if seen[r] <= self.num_items else "these items"
                raise ValueError(f"raw item id {r!r} (position {pos}) is already in {where} of {self.name} "
                                 f"(item id {seen[r]})")
            seen[r] = self.num_items + pos + 1
        old = self._added_features
        feats = torch.as_tensor(features).float()
        return Recommender(self.checkpoint, self.model, self.rec_loss, self.max_len, torch.cat([self._items, vectors]),
                           feats if old is None else torch.cat([old, feats]), [*self.added_raw_ids, *raw])

    def recommend(self, history: Sequence[int], k: int = 10, exclude_seen: bool = True,
                  candidates: Sequence[int] | None = None) -> list[tuple[int, float]]:
        """Top-k (item id, score) over the whole catalogue, or over `candidates` only, best first (ties: lower id
        first)."""
        return self.recommend_many([history], k, exclude_seen, candidates)[0]

    def recommend_many(self, histories: Sequence[Sequence[int]], k: int = 10, exclude_seen: bool = True,
                       candidates: Sequence[int] | None = None) -> list[list[tuple[int, float]]]:
        """recommend() for many histories, scored in blocks of users; fewer than k items when fewer remain."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        checked = self._check_many(histories)
        outside = None
        if candidates is not None:
            if not candidates:
                raise ValueError("candidates is empty: give the item ids to rank, or None for the whole catalogue")
            outside = torch.ones(self.num_items, dtype=torch.bool)
            outside[torch.tensor(self._check(candidates, "candidates"), dtype=torch.long) - 1] = False
        users = self._encode(checked)
        out: list[list[tuple[int, float]]] = []
        for _, scores in score_blocks(users, self._items, checked if exclude_seen else None):
            if outside is not None:
                scores.masked_fill_(outside, float("-inf"))
            # a stable sort keeps equal scores (items with identical vectors) in id order
            values, order = torch.sort(scores, dim=1, descending=True, stable=True)
            values, order = values[:, :k], order[:, :k]
            for vals, idx in zip(values.tolist(), order.tolist()):
                out.append([(i + 1, v) for i, v in zip(idx, vals) if v != float("-inf")])
        return out


def load(model_dir: str | Path, embeddings_dir: str | Path | None = None, rebuild: str | None = None,
         added_items: str | Path | bool = True) -> Recommender:
    """A Recommender from a model directory written by train_id (SASRec) or train (content, Molar, hybrid).

    A content model reads the item features of the embedding store its config.json records (relative to the
    workspace holding the model directory, model_dir/../..), or of `embeddings_dir`. A checkpoint of another
    format, a missing file, or item features other than the ones it was trained on are refused (ArtifactError
    naming the file and `rebuild`, by default the command the pipeline rebuilds the model with).

    `added_items`: True takes the items `molar add-items` added to this model when there are any
    (added_items_dir(model_dir), artifacts/added-items/<model>); a path reads that directory; False gives the
    trained catalogue alone. Added items made for another training of the model are refused."""
    model_dir = Path(model_dir)
    hint = rebuild or _retrain_command(model_dir.name)
    ckpt = open_checkpoint(model_dir, hint)
    hint = rebuild or _retrain_command(ckpt.name)
    ckpt.rebuild = hint
    conf, conf_path = ckpt.config, model_dir / "config.json"
    store = None
    if "config" in conf:
        model = load_sasrec(model_dir, hint)
        rec_loss, max_len, source = None, model.cfg.max_len, model_dir / "model.safetensors"
    elif "content_config" in conf:
        try:
            ccfg = ContentConfig(**conf["content_config"])
            rec_loss = str(conf["loss_config"]["rec_loss"])
            recorded = Path(conf["item_features"]["store"])
        except (KeyError, TypeError) as err:
            raise ArtifactError(str(conf_path), f"incomplete content model config ({err!r})", hint) from None
        source = store = (Path(embeddings_dir) if embeddings_dir is not None
                          else model_dir.resolve().parent.parent / recorded)
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
    rec = Recommender(ckpt, model, rec_loss, max_len, items)
    where = added_items_dir(model_dir) if added_items is True else Path(added_items) if added_items else None
    if where is None or (added_items is True and not where.exists()):
        return rec
    return _with_added(rec, read_added_items(where, _add_command(ckpt.name)), store)


def _with_added(rec: Recommender, added: AddedItems, store: Path | None) -> Recommender:
    """`rec` with the items of an added-items directory, refused unless it was made for this very model: the
    same trained catalogue, features from the encoder settings of its embedding store, and the saved vectors
    equal to what this model's adapter makes of the features (else the model was retrained since)."""
    redo, again = _add_command(rec.name), f"molar add-items ITEMS_FILE --model {rec.name}"
    if not rec.scores_new_items or store is None:
        raise ArtifactError(str(added.path), SASREC_NEW_ITEMS, None)
    if added.trained_items != rec.num_trained_items:
        raise ArtifactError(str(added.path / "meta.json"), f"was made for a catalogue of {added.trained_items} "
                            f"trained items, {rec.name} has {rec.num_trained_items}: remove {added.path} and add the "
                            "items again", again)
    settings = open_manifest(store).settings_hash
    if added.meta["settings_hash"] != settings:
        raise ArtifactError(str(added.path / "meta.json"), f"its features were made with other encoder settings "
                            f"({str(added.meta['settings_hash'])[:12]}) than {store} ({settings[:12]}): remove "
                            f"{added.path} and add the items again", again)
    vectors = rec.encode_items(added.features)
    if vectors.shape != added.vectors.shape or not torch.allclose(vectors, added.vectors, rtol=SAVED_VECTORS_RTOL,
                                                                  atol=SAVED_VECTORS_ATOL):
        raise ArtifactError(str(added.path / "item_vectors.safetensors"), f"are not what {rec.checkpoint.path} makes "
                            "of the added items' features: the model was retrained since", redo)
    return rec.add_items(added.features, added.raw_item_ids)


def _add_command(name: str) -> str:
    """The command that recomputes the vectors of the items added to a model (from their kept features)."""
    return f"molar add-items --model {name}"


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
