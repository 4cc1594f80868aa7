"""docs/configuration.md cannot drift from the params schema: every key is described, the committed page is what
the generator writes now, and every key of params.yaml is in it with the schema's default."""

from __future__ import annotations

import functools
import inspect
import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config_reference import COMMAND, PAGE, VARIANTS_EXAMPLE, render, type_text
from pipeline.params import Params, Section, parse_params

REPO = Path(__file__).resolve().parents[1]


def _is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def walk(model: type[BaseModel], prefix: str = ""):
    """(dotted key, field) of every field of `model`, then of its nested sections' fields, recursively."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key, field
        if _is_section(field.annotation):
            yield from walk(field.annotation, f"{key}.")


def missing_descriptions(model: type[BaseModel]) -> list[str]:
    return [key for key, field in walk(model) if not (field.description or "").strip()]


def leaf_keys() -> list[str]:
    """Every key the page must have a row for: fields that are not themselves sections."""
    return [key for key, field in walk(Params) if not _is_section(field.annotation)]


def page_rows(text: str) -> dict[str, tuple[str, str, str]]:
    """key -> (type, default, meaning) of every table row, `\\|` read back as `|`."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            key, kind, default, meaning = cells
            assert key not in rows, f"{key}: two rows"
            rows[key.strip("`")] = (kind.removeprefix("`").removesuffix("`"),
                                    default.removeprefix("`").removesuffix("`"), meaning)
    return rows


@pytest.fixture(scope="module")
def page() -> str:
    """The committed page (test_committed_page_is_current ties it to the generator)."""
    path = REPO / PAGE
    assert path.exists(), f"{PAGE} is missing: write it with `{COMMAND}` from the repository root"
    return path.read_text()


def test_every_key_has_a_description():
    missing = missing_descriptions(Params)
    assert not missing, f"pipeline/params.py: no Field(description=...) for {', '.join(missing)}"


def test_a_key_without_a_description_is_named():
    """The walk reaches nested sections: a bare field two levels down is reported by its dotted key."""

    class Inner(Section):
        """A nested section."""

        described: int = Field(1, description="has one")
        bare: int = 2

    class Outer(Section):
        """A section."""

        inner: Inner = Field(Inner(), description="nested")
        blank: str = Field("x", description="  ")

    assert missing_descriptions(Outer) == ["inner.bare", "blank"]


def test_every_section_has_a_docstring_above_its_table(page):
    sections = {"": Params} | {key: f.annotation for key, f in walk(Params) if _is_section(f.annotation)}
    for key, cls in sections.items():
        doc = inspect.cleandoc(vars(cls).get("__doc__") or "")
        assert doc, f"{cls.__name__} ({key or 'params.yaml'}): no docstring"
        assert doc.splitlines()[0].replace("<", "&lt;") in page, f"{cls.__name__}: docstring not in the page"
        if key:
            assert f"# {key}\n" in page, f"{key}: no heading"


def test_committed_page_is_current(page):
    assert page == render(), (f"{PAGE} differs from the schema in pipeline/params.py: regenerate it with "
                               f"`{COMMAND}` from the repository root and commit it")


def test_every_schema_key_has_exactly_one_row(page):
    assert sorted(page_rows(page)) == sorted(leaf_keys())


def test_every_key_written_in_params_yaml_is_in_the_page(page):
    rows = page_rows(page)
    written = yaml.safe_load((REPO / "params.yaml").read_text())

    def keys(node: dict, prefix: str = ""):
        for name, value in node.items():
            if isinstance(value, dict):
                yield from keys(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    found = list(keys(written))
    assert len(found) > 100  # the walk reached the nested sections
    for key in found:
        if key.startswith("train_variants."):  # train_variants.<name>.<key> overrides train.<key>
            assert "train_variants" in rows and f"train.{key.split('.', 2)[2]}" in rows, key
        else:
            assert key in rows, f"params.yaml key {key} is not in {PAGE}"


def test_page_defaults_are_the_schema_defaults(page):
    """A default is read back from the page (JSON) and compared with Params()'s value at that key: a nested
    section's default is its parent's (finetune_encoder.IT.size is 100000, MixtureParams' own is 0)."""
    schema = Params()
    rows = page_rows(page)
    for key, (_, default, _) in rows.items():
        expected = functools.reduce(getattr, key.split("."), schema)
        got = json.loads(default)
        assert got == expected and type(got) is type(expected), f"{key}: page {default}, schema {expected!r}"
    assert rows["finetune_encoder.IT.size"][1] == "100000" and rows["finetune_encoder.UB.size"][1] == "10000"


def test_types_read_as_written(page):
    rows = page_rows(page)
    expected = {"train_id.norm": '"pre" | "post"', "train_id.dropout": "float in [0, 1)", "prepare.path": "str | null",
                "prepare.k_core_user": "int >= 1", "index.nprobe": "int >= 1 | null", "train.lr": "float > 0",
                "embed.pooling": '"last" | "mean" | null', "embed.max_pixels": "int >= 784",
                "protocol.ks": "list[int]", "prepare.min_rating": "float | null"}
    assert {key: rows[key][0] for key in expected} == expected
    assert rows["embed.summary_token"][1] == '"<|endoftext|>"'  # a `|` in a cell survives the table


def test_a_constraint_the_page_cannot_show_fails_loudly():
    class Odd(Section):
        """A section."""

        even: int = Field(2, multiple_of=2, description="an even number")

    with pytest.raises(TypeError, match="constraint"):
        type_text(Odd.model_fields["even"])


def test_the_train_variants_example_is_valid_and_shown(page):
    p = parse_params({"train_variants": VARIANTS_EXAMPLE})
    assert p.train_variant("molar").align_alpha == 0.5 and p.train_variant("content").align_alpha == 0.0
    block = page.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == {"train_variants": VARIANTS_EXAMPLE}


def test_cli_writes_the_page(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["config-reference"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / PAGE).read_text() == render()
    other = tmp_path / "elsewhere" / "params.md"
    res = CliRunner().invoke(app, ["config-reference", "--out", str(other)])
    assert res.exit_code == 0 and other.read_text() == render() and str(other) in res.output
