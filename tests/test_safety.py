"""Safety rules over the project's own source: no pickle, and no model repository code runs unless a param says so.

Artifacts are safetensors, parquet and JSON (no pickle, so loading one cannot run code); Hugging Face `Auto*`
loaders get `trust_remote_code` from `embed.trust_remote_code`, which defaults to false.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.params import EmbedParams

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("molar_core", "stages", "pipeline", "bench") for p in sorted((REPO / d).rglob("*.py"))]


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node


def test_no_pickle_anywhere():
    assert SOURCES
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n and n.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle") for n in names), path
        for call in _calls(tree):
            kw = {k.arg: k.value for k in call.keywords}
            if call.func.attr == "load" and isinstance(call.func.value, ast.Name) and call.func.value.id == "torch":
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, path
            if "allow_pickle" in kw:
                assert isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False, path


def test_remote_code_only_by_param():
    assert EmbedParams().trust_remote_code is False
    seen = 0
    for path in SOURCES:
        for call in _calls(ast.parse(path.read_text())):
            target = call.func.value
            if call.func.attr == "from_pretrained" and isinstance(target, ast.Name) and target.id.startswith("Auto"):
                seen += 1
                kw = {k.arg: k.value for k in call.keywords}
                assert "trust_remote_code" in kw, f"{path}:{call.lineno}: {target.id}.from_pretrained without it"
                assert not isinstance(kw["trust_remote_code"], ast.Constant) or kw["trust_remote_code"].value is False
    assert seen >= 4  # the sentence and mllm encoders' model, config and tokenizer loaders
