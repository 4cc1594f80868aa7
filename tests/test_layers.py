"""The import rule between the project's packages, checked on every import statement (inside functions too).

Layers, each importing only from those before it (and from itself):

1. molar_core, the library: nothing of pipeline or stages.
2. pipeline's foundation (FOUNDATION: the params schema, the artifact paths, the workspace readers, the params ->
   library configs, the console): molar_core and each other.
3. stages: molar_core, pipeline's foundation and stages.
4. the rest of pipeline (the CLI, the report, add-items, ...): molar_core and pipeline, never stages; the CLI runs
   a stage through its entry point `stages.<name>.main`, looked up by name when the command runs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("molar_core", "pipeline", "stages")
FOUNDATION = {"pipeline", "pipeline.params", "pipeline.paths", "pipeline.readers", "pipeline.configs",
              "pipeline.console"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules an import statement imports: `from a import b` is module a.b when that is a module, else a."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def imports(source: str, module: str, is_package: bool = False, known: set[str] = frozenset(),
            at_import_time: bool = False) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import statement in `source`: all of them, those inside functions
    included, or with `at_import_time` only those that run when the module is imported (not in a function, not
    under `if TYPE_CHECKING:`)."""
    def visit(node: ast.AST) -> Iterator[tuple[int, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, module, is_package, known):
                    yield child.lineno, target
            elif at_import_time and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            elif at_import_time and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from (x for n in child.orelse for x in visit(ast.Module(body=[n], type_ignores=[])))
                continue
            else:
                yield from visit(child)

    yield from visit(ast.parse(source))


def layer_violation(module: str, target: str) -> str | None:
    """Why `module` may not import `target` (None: it may)."""
    src, dst = module.split(".")[0], target.split(".")[0]
    if dst not in PACKAGES or dst == src == "stages" or dst == src == "molar_core":
        return None
    if src == "molar_core":
        return "molar_core (the library) imports nothing of pipeline or stages: pass it plain values"
    if src == "stages":
        if dst == "pipeline" and target not in FOUNDATION:
            return f"stages import only pipeline's foundation ({', '.join(sorted(FOUNDATION - {'pipeline'}))})"
        return None
    # src is pipeline
    if dst == "stages":
        return ("pipeline imports nothing of stages (the CLI runs a stage by name through its main(); what a stage "
                "and pipeline share belongs in pipeline's foundation)")
    if module in FOUNDATION and dst == "pipeline" and target not in FOUNDATION:
        return "pipeline's foundation imports only molar_core and the rest of the foundation"
    return None


def violations(modules: dict[str, Path]) -> list[str]:
    known = set(modules)
    found = []
    for name, path in modules.items():
        for line, target in dict.fromkeys(imports(path.read_text(), name, path.name == "__init__.py", known)):
            why = layer_violation(name, target)
            if why:
                found.append(f"{path.relative_to(ROOT)}:{line}: {name} imports {target}: {why}")
    return found


def test_every_import_follows_the_layer_rule():
    modules = project_modules()
    assert len(modules) > 50 and {"pipeline.cli", "stages.common", "molar_core.recommender"} <= set(modules)
    assert FOUNDATION <= set(modules), f"FOUNDATION names modules that do not exist: {FOUNDATION - set(modules)}"
    found = violations(modules)
    assert not found, "imports that break the layer rule (see tests/test_layers.py):\n" + "\n".join(found)


@pytest.mark.parametrize(("module", "source", "target"), [
    ("molar_core.models.x", "def f():\n    from pipeline.params import Params\n", "pipeline.params"),
    ("molar_core.x", "import stages.common\n", "stages.common"),
    ("pipeline.report", "def f():\n    if True:\n        from stages import train\n", "stages.train"),
    ("pipeline.readers", "from pipeline import workspace\n", "pipeline.workspace"),
    ("stages.train", "from pipeline.cli import app\n", "pipeline.cli"),
    ("molar_core.models.build", "from ..checkpoint import x\nfrom ...stages import y\n", "stages.y"),
])
def test_the_rule_catches_an_import_wherever_it_is(module, source, target):
    known = {"pipeline.params", "pipeline.workspace", "pipeline.cli", "stages.common", "stages.train", "stages.y",
             "molar_core.checkpoint"}
    found = [(t, layer_violation(module, t)) for _, t in imports(source, module, known=known)]
    assert (target, layer_violation(module, target)) in found and layer_violation(module, target)


def test_allowed_imports_pass():
    for module, target in [("stages.train", "pipeline.readers"), ("stages.train", "molar_core.models.build"),
                           ("stages.train", "stages.common"), ("pipeline.cli", "pipeline.workspace"),
                           ("pipeline.configs", "molar_core.models.build"), ("molar_core.x", "torch")]:
        assert layer_violation(module, target) is None, (module, target)


def test_no_import_cycle_among_modules():
    """The imports a module runs when it is imported never lead back to it (an import inside a function, run
    later, may)."""
    modules = project_modules()
    known = set(modules)
    graph = {name: {t for _, t in imports(path.read_text(), name, path.name == "__init__.py", known, True)
                    if t in known and t != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def cycle_from(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = cycle_from(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for name in sorted(graph):
        if name not in state:
            found = cycle_from(name)
            assert found is None, "import cycle: " + " -> ".join(found)


def test_the_cli_runs_stages_through_their_entry_points():
    """Every `_stage("name", ...)` of the CLI names a module stages/name.py with a main()."""
    tree = ast.parse((ROOT / "pipeline/cli.py").read_text())
    names = [call.args[0].value for call in ast.walk(tree) if isinstance(call, ast.Call)
             and isinstance(call.func, ast.Name) and call.func.id == "_stage" and call.args
             and isinstance(call.args[0], ast.Constant)]
    assert len(names) >= 6
    for name in names:
        stage = ROOT / "stages" / f"{name}.py"
        assert stage.exists(), f"molar runs stages.{name}, which does not exist"
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in ast.parse(stage.read_text()).body), \
            f"stages/{name}.py has no main()"
