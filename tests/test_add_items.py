"""Items added to a trained content model without retraining (`molar add-items`, Recommender.add_items).

The workspace is a catalogue whose item text names a group (jazz albums, horror films, cookbooks, garden tools)
and whose users each consume items of one group, so the next item of a user is learnably "another item of the
user's group". One item of each group is left out of the data before training. Added afterwards, it must be what
a history of its group's other items gets first, through the real encoder (the packaged all-MiniLM-L6-v2), the
embedding caches and the trained adapter: a model without it cannot rank it at all.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from typer.testing import CliRunner

import molar_core
from molar_core.added_items import added_items_dir, read_added_items
from molar_core.errors import ArtifactError, MolarError
from molar_core.models.molar import scoring_form
from molar_core.store import load_item_embeddings
from molar_core.training import encode_users
from pipeline import paths
from pipeline.cli import app
from pipeline.params import parse_params

THEMES = {"jazz": ("Jazz album", "saxophone, trumpet and piano jazz music recorded live"),
          "horror": ("Horror film", "a scary haunted house horror movie full of ghosts"),
          "cooking": ("Cookbook", "recipes for baking bread and cooking pasta at home"),
          "garden": ("Garden tool", "a rake and shovel for planting flowers and trees")}
PER_GROUP, USERS_PER_GROUP, SEQ = 9, 20, 7
NEW = [f"{t}-{PER_GROUP - 1}" for t in THEMES]  # one item of each group, left out of the training data
runner = CliRunner()


def _params(root: Path) -> dict:
    table = {"interactions": str(root / "inter.csv"), "items": str(root / "items.csv"), "title_col": "title",
             "text_cols": ["description"]}
    small = {"dim": 16, "max_len": 10, "batch_size": 32, "patience": 100}
    return {"prepare": {"source": "table", "k_core_user": 3, "table": table},
            "train_id": {**small, "max_epochs": 2},
            "train": {**small, "max_epochs": 10, "adapter_hidden": 32},
            "train_variants": {"content": {}, "hybrid": {"hybrid": True, "rec_loss": "ce"}}}


@pytest.fixture(scope="module")
def grouped(tmp_path_factory, one_torch_thread) -> Path:
    """A finished workspace (prepare, embed, sasrec, content, hybrid) without the NEW items, and new_items.csv
    holding them in the layout a user has (raw_item_id, title, a text column)."""
    from stages import embed, prepare, train, train_id

    root = tmp_path_factory.mktemp("grouped")
    rng = np.random.default_rng(0)
    catalogue = pl.DataFrame([{"item_id": f"{t}-{j}", "title": f"{name} no. {j}", "description": desc}
                              for t, (name, desc) in THEMES.items() for j in range(PER_GROUP)])
    rows = []
    for g, t in enumerate(THEMES):
        for u in range(USERS_PER_GROUP):
            rows += [{"user_id": f"u{g}-{u}", "item_id": f"{t}-{j}", "timestamp": pos}
                     for pos, j in enumerate(rng.permutation(PER_GROUP)[:SEQ])]
    held_out = pl.col("item_id").is_in(NEW)
    pl.DataFrame(rows).filter(~held_out).write_csv(root / "inter.csv")
    catalogue.filter(~held_out).write_csv(root / "items.csv")
    catalogue.filter(held_out).rename({"item_id": "raw_item_id"}).write_csv(root / "new_items.csv")
    (root / "params.yaml").write_text(yaml.safe_dump(_params(root)))
    p = parse_params(_params(root))
    prepare.run(p.prepare, root)
    embed.run(p.embed, root)
    train_id.run(p.train_id, p.protocol, root)
    for name in ("content", "hybrid"):
        train.run(name, p.train_variant(name), p.protocol, root)
    return root


@pytest.fixture
def ws(grouped, tmp_path) -> Path:
    """A copy of the workspace to add items to (paths inside it are relative, so a copy works as the original)."""
    root = tmp_path / "ws"
    shutil.copytree(grouped, root)
    params = _params(root)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _add(root: Path, *args: str) -> str:
    res = runner.invoke(app, ["add-items", *args, "--root", str(root)])
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def _fails(root: Path, *args: str) -> str:
    res = runner.invoke(app, ["add-items", *args, "--root", str(root)])
    assert res.exit_code == 1, res.output
    return " ".join(res.output.split())


def _group_ids(root: Path) -> dict[str, list[int]]:
    items = pl.read_parquet(root / paths.ITEMS)
    return {t: items.filter(pl.col("raw_item_id").str.starts_with(f"{t}-"))["item_id"].to_list() for t in THEMES}


def _files(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _printed(output: str) -> list[tuple[int, str]]:
    """(item id, title start) of the rows `molar recommend` prints."""
    cells = [line.split("│") for line in output.splitlines() if line.startswith("│")]
    return [(int(c[2]), c[3].strip()) for c in cells if c[1].strip().isdigit()]


def test_added_items_are_recommended_without_retraining(ws):
    groups = _group_ids(ws)
    n = sum(len(v) for v in groups.values())
    assert n == len(THEMES) * (PER_GROUP - 1)  # the NEW items are in no sequence and not in the catalogue

    before = molar_core.load(ws / "artifacts/content")
    assert before.num_items == n and before.added_raw_ids == ()
    for t, hist in groups.items():
        assert all(i <= n for i, _ in before.recommend(hist, k=n))
    with pytest.raises(ValueError, match=rf"item id {n + 1} .*prepared ids are 1\.\.{n}$"):
        before.recommend([1, n + 1])
    res = runner.invoke(app, ["recommend", "--history", ",".join(map(str, groups["jazz"])), "-m", "content",
                              "--root", str(ws)])
    assert res.exit_code == 0 and "no. 8" not in res.output

    untouched = {d: _files(ws / d) for d in ("artifacts/content", "artifacts/embeddings", "data/prepared")}
    out = _add(ws, str(ws / "new_items.csv"), "--model", "content")
    assert f"4 items added to content (4 encoded, 0 read from the caches); 4 added items in all, ids {n + 1}..{n + 4}" \
        in out
    # no DVC output changed: no stage is stale, nothing retrains
    assert {d: _files(ws / d) for d in untouched} == untouched

    after = molar_core.load(ws / "artifacts/content")
    assert after.num_items == n + 4 and after.num_trained_items == n and list(after.added_raw_ids) == NEW
    for g, (t, hist) in enumerate(groups.items()):
        top = after.recommend(hist, k=3)
        assert top[0][0] == n + 1 + g, (t, top)  # the group's new item, ahead of every other item
        # a history ending on the new item: the group's unseen items follow
        with_new = after.recommend(hist[:4] + [n + 1 + g], k=4)
        assert sorted(i for i, _ in with_new) == hist[4:], (t, with_new)

    res = runner.invoke(app, ["recommend", "--history", ",".join(map(str, groups["garden"])), "-m", "content",
                              "-k", "3", "--root", str(ws)])
    assert res.exit_code == 0, res.output
    top_id, top_title = _printed(res.output)[0]
    assert top_id == n + 4 and top_title.startswith("Garden tool")
    # a known user (the saved vector after their sequence) is ranked over the added items as well
    test = pl.read_parquet(ws / paths.TEST)
    user = test.row(0, named=True)
    group = user["raw_user_id"].split("-")[0][1:]
    res = runner.invoke(app, ["recommend", "--user", user["raw_user_id"], "-m", "content", "-k", "3", "--root",
                              str(ws)])
    assert res.exit_code == 0, res.output
    assert n + 1 + int(group) in [i for i, _ in _printed(res.output)]


def test_encode_items_is_the_trained_adapter_in_scoring_form(grouped):
    _, feats = load_item_embeddings(grouped / "artifacts/embeddings")
    content = molar_core.load(grouped / "artifacts/content")
    assert torch.equal(content.encode_items(feats), content.item_vectors())
    assert torch.allclose(content.encode_items(feats[3:5]), content.item_vectors()[3:5], atol=1e-6)

    hybrid = molar_core.load(grouped / "artifacts/hybrid")
    model = hybrid.model
    ids = torch.arange(1, hybrid.num_items + 1)
    with torch.no_grad():
        content_part = scoring_form(model.item_table() - model.id_emb(ids), "ce")
    got = hybrid.encode_items(feats)
    assert torch.allclose(got, content_part, atol=1e-6)  # an added item has no id embedding: the content alone
    assert not torch.allclose(got, hybrid.item_vectors(), atol=1e-3)  # trained items do have one
    grown = hybrid.add_items(feats[:2], ["copy-a", "copy-b"])
    assert torch.allclose(grown.item_vectors()[-2:], content_part[:2], atol=1e-6)

    sasrec = molar_core.load(grouped / "artifacts/sasrec")
    assert not sasrec.scores_new_items
    for call in (lambda: sasrec.encode_items(feats), lambda: sasrec.add_items(feats[:1], ["x"])):
        with pytest.raises(MolarError, match="SASRec cannot score items it was not trained on.*use a content model"):
            call()
    with pytest.raises(ValueError, match=r"shape \(4, 7\).*width 384"):
        content.encode_items(torch.zeros(4, 7))


def test_add_items_in_python(grouped):
    rec = molar_core.load(grouped / "artifacts/content")
    n = rec.num_items
    _, feats = load_item_embeddings(grouped / "artifacts/embeddings")
    grown = rec.add_items(feats[[0, 9]], ["twin-of-1", "twin-of-10"])
    assert rec.num_items == n and grown.num_items == n + 2 and grown.added_raw_ids == ("twin-of-1", "twin-of-10")
    assert torch.equal(grown.item_vectors()[:n], rec.item_vectors())
    assert torch.allclose(grown.item_vectors()[n:], rec.item_vectors()[[0, 9]], atol=1e-6)
    # a twin of an item scores as that item; `candidates` restricts the ranking to the ids given
    scores = dict(grown.recommend([2, 3, 4], k=n + 2))
    assert abs(scores[n + 1] - scores[1]) < 1e-6 and abs(scores[n + 2] - scores[10]) < 1e-6
    only = grown.recommend([2, 3, 4], k=5, candidates=[n + 2, 1, 3])
    assert sorted(i for i, _ in only) == [1, n + 2]  # 3 is in the history
    with pytest.raises(ValueError, match="candidates is empty"):
        grown.recommend([2], candidates=[])
    # trained histories are encoded as before; the path for histories with added items encodes them alike
    histories = [[1, 2, 3], [5, 9, 12, 30], list(range(1, 20))]
    assert torch.equal(grown.user_vectors(histories), rec.user_vectors(histories))
    table = grown._full_table()
    via_table = scoring_form(encode_users(lambda s: grown.model.hidden(s, table)[:, -1], histories,
                                          grown.max_len, torch.device("cpu")), "infonce")
    assert torch.allclose(via_table, rec.user_vectors(histories), atol=1e-5)
    # an added item in a history reads the added item's vector: its twin's history gives the same user
    assert torch.allclose(grown.user_vector([2, n + 1]), grown.user_vector([2, 1]), atol=1e-5)
    mixed = grown.user_vectors([[2, n + 1], [1, 2, 3]])
    assert torch.equal(mixed[1], rec.user_vector([1, 2, 3]))
    with pytest.raises(ValueError, match=r"'twin-of-1' \(position 1\) is already in the catalogue.*item id "
                                         rf"{n + 1}"):
        grown.add_items(feats[:2], ["fresh", "twin-of-1"])
    with pytest.raises(ValueError, match=rf"'dup' \(position 1\) is already in these items .*item id {n + 1}"):
        rec.add_items(feats[:2], ["dup", "dup"])
    with pytest.raises(ValueError, match="2 feature rows but 1 raw item ids"):
        rec.add_items(feats[:2], ["one"])
    with pytest.raises(ValueError, match=rf"item id {n + 3} .*added ids {n + 1}\.\.{n + 2}"):
        grown.recommend([n + 3])


def test_bad_items_files_are_refused_naming_the_row(ws):
    new = ws / "new_items.csv"
    dup = ws / "dup.csv"
    dup.write_text("raw_item_id,title,description\nnew-a,A,x\nnew-b,B,y\nnew-a,C,z\n")
    assert f"{dup}, row 4, column 'raw_item_id': id 'new-a' appears a second time" in _fails(ws, str(dup), "-m",
                                                                                         "content")
    known = ws / "known.csv"
    known.write_text("raw_item_id,title\nnew-c,C\njazz-2,Again\n")
    items = pl.read_parquet(ws / paths.ITEMS)
    jazz2 = items.filter(pl.col("raw_item_id") == "jazz-2")["item_id"][0]
    assert (f"{known}, row 3, column 'raw_item_id': item 'jazz-2' is already in the catalogue (item_id {jazz2})"
            in _fails(ws, str(known), "-m", "content"))
    no_id = ws / "no_id.csv"
    no_id.write_text("id,title\n1,A\n")
    assert f"{no_id}, column 'raw_item_id': missing column 'raw_item_id' (columns present: id, title)" in _fails(
        ws, str(no_id), "-m", "content")
    blank = ws / "blank.parquet"
    pl.DataFrame({"raw_item_id": ["p", "q"], "text": ["Title: P", " "]}).write_parquet(blank)
    assert f"{blank}, row 2, column 'text': value is missing" in _fails(ws, str(blank), "-m", "content")
    assert "SASRec cannot score items it was not trained on" in _fails(ws, str(new), "-m", "sasrec")
    assert "content has no added items to update: give an ITEMS_FILE" in _fails(ws, "-m", "content")
    other = ws / "other.yaml"
    other.write_text(yaml.safe_dump({**_params(ws), "embed": {"normalize": False}}))
    store = re.escape(str(ws / "artifacts/embeddings"))
    assert re.search(rf"{store}: was made with other encoder settings .* than the embed params give now",
                     _fails(ws, str(new), "-m", "content", "--params", str(other)))
    assert not (ws / paths.added_items_dir("content")).exists()  # nothing half-written

    _add(ws, str(new), "-m", "content")
    again = _fails(ws, str(new), "-m", "content")
    assert f"{new}, row 2, column 'raw_item_id': item 'jazz-8' is already in the catalogue (item_id 33)" in again


def test_new_items_are_read_rendered_and_hashed_as_prepare_does(grouped, tmp_path):
    from molar_core.data.images import ImageConfig
    from molar_core.data.new_items import read_new_items
    from molar_core.errors import DataError

    prepared = pl.read_parquet(grouped / paths.ITEMS)
    jazz0 = prepared.filter(pl.col("raw_item_id") == "jazz-0").row(0, named=True)
    (tmp_path / "covers").mkdir()
    (tmp_path / "covers" / "b.jpg").write_bytes(b"not decoded here")
    rendered = tmp_path / "rendered.csv"
    pl.DataFrame({"raw_item_id": ["reissue", "b"], "title": ["Jazz album no. 0", None],
                  "description": [THEMES["jazz"][1], "some words"], "image": [None, "covers/b.jpg"]}).write_csv(rendered)
    items, missing = read_new_items(rendered, {"jazz-0": jazz0["item_id"]}, 40, ImageConfig())
    assert items["item_id"].to_list() == [40, 41] and items.columns == prepared.columns
    same = {"item_id": 0, "raw_item_id": "", "cold": True}  # an added item is new to the model: cold
    assert items.row(0, named=True) | same == jazz0 | same and items["cold"].all()
    b = items.row(1, named=True)
    assert b["title"] == "b" and b["text"] == "Title: b. Description: some words"  # prepare's fallbacks
    assert b["has_image"] and b["image_path"] == str((tmp_path / "covers" / "b.jpg").resolve())
    assert missing == {"no_image": 1}
    verbatim = tmp_path / "verbatim.jsonl"
    verbatim.write_text('{"raw_item_id": 7, "text": "Exactly this.", "ignored": "x"}\n')
    items, missing = read_new_items(verbatim, {}, 1)
    assert items.select("raw_item_id", "title", "text").row(0) == ("7", "7", "Exactly this.") and missing == {}
    escaping = tmp_path / "escaping.csv"
    escaping.write_text("raw_item_id,image_path\nok,\nbad,../../etc/passwd\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(escaping))}, row 3, column 'image': .*escapes the image root"):
        read_new_items(escaping, {}, 1)
    both = tmp_path / "both.csv"
    both.write_text("raw_item_id,image,image_path\na,x,y\n")
    with pytest.raises(DataError, match="both an image and an image_path column"):
        read_new_items(both, {}, 1)


def test_adding_more_encodes_only_new_contents_and_keeps_the_ids(ws):
    n = pl.read_parquet(ws / paths.ITEMS).height
    _add(ws, str(ws / "new_items.csv"), "-m", "content")
    first = read_added_items(ws / paths.added_items_dir("content"))
    more = ws / "more.parquet"
    pl.DataFrame({"raw_item_id": ["reissue-jazz-0", "garden-9", "garden-10"],
                  "title": ["Jazz album no. 0", "Garden tool no. 9", "Garden tool no. 10"],
                  "description": [THEMES["jazz"][1], THEMES["garden"][1], THEMES["garden"][1]]}).write_parquet(more)
    out = _add(ws, str(more), "-m", "content")
    # reissue-jazz-0 has jazz-0's text: its vector is read from the trained store, the other two are encoded
    assert f"3 items added to content (2 encoded, 1 read from the caches); 7 added items in all, ids {n + 1}..{n + 7}" \
        in out
    second = read_added_items(ws / paths.added_items_dir("content"))
    assert second.items.head(4).equals(first.items) and torch.equal(second.features[:4], first.features)
    assert second.items["item_id"].to_list() == list(range(n + 1, n + 8))
    rec = molar_core.load(ws / "artifacts/content")
    jazz0 = pl.read_parquet(ws / paths.ITEMS).filter(pl.col("raw_item_id") == "jazz-0")["item_id"][0]
    assert torch.allclose(rec.item_vectors()[n + 4], rec.item_vectors()[jazz0 - 1], atol=1e-6)
    # the same contents for another model: every one is in a cache now
    out = _add(ws, str(ws / "new_items.csv"), "-m", "hybrid")
    assert "4 items added to hybrid (0 encoded, 4 read from the caches)" in out
    hybrid = molar_core.load(ws / "artifacts/hybrid")
    assert hybrid.added_raw_ids == tuple(NEW)
    assert torch.allclose(hybrid.item_vectors()[n:], hybrid.encode_items(first.features), atol=1e-6)


def test_a_retrained_model_refuses_its_stale_added_items_until_they_are_recomputed(ws):
    from stages import train

    _add(ws, str(ws / "new_items.csv"), "-m", "content")
    p = parse_params({**_params(ws), "train": {**_params(ws)["train"], "seed": 1}})
    train.run("content", p.train_variant("content"), p.protocol, ws)
    vectors = ws / paths.added_items_dir("content") / "item_vectors.safetensors"
    with pytest.raises(ArtifactError, match=rf"{re.escape(str(vectors))}: are not what .* makes of the added items' "
                                            r"features: the model was retrained since \(rebuild it with `molar "
                                            r"add-items --model content`\)"):
        molar_core.load(ws / "artifacts/content")
    n = len(THEMES) * (PER_GROUP - 1)
    assert molar_core.load(ws / "artifacts/content", added_items=False).num_items == n
    out = _add(ws, "-m", "content")
    assert "0 items added to content (0 encoded, 0 read from the caches); 4 added items in all" in out
    rec = molar_core.load(ws / "artifacts/content")
    added = read_added_items(ws / paths.added_items_dir("content"))
    assert torch.equal(rec.item_vectors()[n:], rec.encode_items(added.features))


def test_the_workspace_and_the_library_agree_on_where_added_items_live():
    for model in ("content", "molar"):
        assert paths.added_items_dir(model) == added_items_dir(paths.model_dir(model))
    assert paths.ADDED_EMBEDDINGS.parent == paths.ADDED_ITEMS
