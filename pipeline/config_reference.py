"""The configuration reference (docs/configuration.md), rendered from the params schema so it cannot drift from it.

Every key's type and bounds come from its annotation and Field constraints, its default from `Params()` (so a
nested section's default is its parent's, e.g. finetune_encoder.IT.size), its meaning from its description, and
each table's text from the section's docstring. tests/test_config_reference.py fails when the committed page
differs from what `render()` gives now.
"""

from __future__ import annotations

import inspect
import json
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.params import Params

PAGE = Path("docs/configuration.md")
COMMAND = "molar config-reference"
VARIANTS_EXAMPLE = {"content": {"align_alpha": 0.0}, "molar": {"align_alpha": 0.5}}
VARIANTS_TYPE = "mapping: name -> {train key: value}"


def is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _number(x: float | int) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _bounds(metadata: list) -> str:
    """`>= 1`, `> 0`, `in [0, 1)`: the Field constraints; any other kind raises so none is silently dropped."""
    low = high = None
    for m in metadata:
        if isinstance(m, at.Ge):
            low = ("[", ">=", m.ge)
        elif isinstance(m, at.Gt):
            low = ("(", ">", m.gt)
        elif isinstance(m, at.Le):
            high = ("]", "<=", m.le)
        elif isinstance(m, at.Lt):
            high = (")", "<", m.lt)
        else:
            raise TypeError(f"no rendering for the constraint {m!r}")
    if low and high:
        return f" in {low[0]}{_number(low[2])}, {_number(high[2])}{high[0]}"
    if low or high:
        _, op, value = low or high
        return f" {op} {_number(value)}"
    return ""


def _type_name(annotation: Any, bounds: str) -> str:
    origin = get_origin(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(json.dumps(v) for v in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a, bounds) for a in get_args(annotation))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a, '') for a in get_args(annotation))}]"
    if annotation in (int, float):
        return annotation.__name__ + bounds
    if annotation in (str, bool, dict):
        return annotation.__name__
    raise TypeError(f"no rendering for the type {annotation!r}")


def type_text(field: FieldInfo) -> str:
    """A field's type as a reader writes it: `int >= 1`, `"pre" | "post"`, `float in [0, 1)`, `str | null`."""
    return _type_name(field.annotation, _bounds(field.metadata))


def _prose(text: str) -> str:
    """`<` outside code spans as an entity: GitHub would drop `<name>` as an HTML tag."""
    parts = text.split("`")
    return "`".join(part if i % 2 else part.replace("<", "&lt;") for i, part in enumerate(parts))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return _cell(f"`{text}`")


def _row(key: str, kind: str, default: Any, meaning: str) -> str:
    return f"| {_code(key)} | {_code(kind)} | {_code(json.dumps(default))} | {_cell(_prose(meaning))} |"


def _doc(cls: type) -> str:
    return _prose(inspect.cleandoc(vars(cls).get("__doc__") or ""))


HEADER = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]


def _section(key: str, field: FieldInfo, value: BaseModel, level: int) -> list[str]:
    """One section's table (its nested sections follow as their own tables, a heading level down)."""
    cls = type(value)
    out = [f"{'#' * level} {key}", "", _prose(field.description or ""), "", _doc(cls), "", *HEADER]
    nested = []
    for name, sub in cls.model_fields.items():
        if is_section(sub.annotation):
            nested.append((f"{key}.{name}", sub, getattr(value, name)))
        else:
            out.append(_row(f"{key}.{name}", type_text(sub), getattr(value, name), sub.description or ""))
    for sub_key, sub, sub_value in nested:
        out += ["", *_section(sub_key, sub, sub_value, level + 1)]
    return out


def _variants(field: FieldInfo, default: Any) -> list[str]:
    """train_variants is no section but a mapping of names to overrides of `train`: explained with an example."""
    example = yaml.safe_dump({"train_variants": VARIANTS_EXAMPLE}, default_flow_style=None, sort_keys=False)
    return ["## train_variants", "", _prose(field.description or ""), "",
            "Each entry becomes the DVC stage `train@<name>`: the keys written in the `train` section with the "
            "entry's overrides on top (any key of the `train` table; the checks of `train` apply to the result), "
            "trained and written to `artifacts/<name>/`. A name must be an identifier other than sasrec, index "
            "and embeddings; `evaluate.models` and `index.models` pick the variants by these names. For example "
            "a content-only model and Molar with alignment:", "",
            "```yaml", example.rstrip("\n"), "```", "",
            "`dvc exp run -S train_variants.molar.align_alpha=0.1` then retrains `train@molar` only.", "",
            *HEADER, _row("train_variants", VARIANTS_TYPE, default, field.description or "")]


def render() -> str:
    """The whole page: one table per section and nested section, in the schema's order (params.yaml's)."""
    defaults = Params()
    lines = ["# Configuration reference", "",
             f"Generated from the schema in `pipeline/params.py` by `{COMMAND}`: edit the schema and rerun the "
             "command rather than editing this page.", "",
             "Every key is optional; a key left out of `params.yaml` takes its default. Keys are written nested "
             "in `params.yaml` and dotted on the command line (`dvc exp run -S train_id.lr=0.001`, "
             "`molar check-params`). An unknown key, a wrong type or a value out of range fails before any "
             "stage runs, naming the key; so does a key that the other settings leave unread (e.g. "
             "`train.temperature` with `rec_loss: bce`) written with a value other than its default.", "",
             _doc(Params)]
    for name, field in Params.model_fields.items():
        lines.append("")
        if is_section(field.annotation):
            lines += _section(name, field, getattr(defaults, name), 2)
        else:
            lines += _variants(field, getattr(defaults, name))
    return "\n".join(lines) + "\n"
