"""The documentation site (mkdocs.yml over docs/): `mkdocs build --strict` passes, and a broken link fails it.

mkdocs, mkdocs-material and mkdocstrings[python] come with the test extra (`pip install -e ".[test]"`). Without
them these tests skip, except in CI (MOLAR_CI set by .ci/run), where a missing site builder is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILDER_MODULES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_modules() -> list[str]:
    missing = []
    for name in BUILDER_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is absent
            found = False
        if not found:
            missing.append(name)
    return missing


pytestmark = pytest.mark.skipif(
    bool(_missing_modules()) and not os.environ.get("MOLAR_CI"),
    reason=f"the site builder is not installed ({', '.join(_missing_modules())} missing): "
    'pip install -e ".[docs]"; in CI (MOLAR_CI set) this fails instead of skipping',
)


def build(config: Path, site_dir: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` with this interpreter; output of both streams in .stdout."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir",
         str(site_dir)],
        cwd=config.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )


def copy_sources(target: Path) -> Path:
    """What the build reads (config, docs, the README its snippets include, the library mkdocstrings reads)."""
    target.mkdir()
    shutil.copy2(ROOT / "mkdocs.yml", target / "mkdocs.yml")
    shutil.copy2(ROOT / "README.md", target / "README.md")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "docs", target / "docs", ignore=ignore)
    shutil.copytree(ROOT / "molar_core", target / "molar_core", ignore=ignore)
    return target / "mkdocs.yml"


def test_the_site_builds_strictly_with_every_page(tmp_path):
    assert not _missing_modules(), f"site builder modules missing: {_missing_modules()}"
    site = tmp_path / "site"
    result = build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}"

    for page in sorted((ROOT / "docs").glob("*.md")):
        out = site / "index.html" if page.stem == "index" else site / page.stem / "index.html"
        assert out.is_file(), f"{page.name} was not rendered ({out})"
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "open implementation of" in home, "docs/index.md no longer includes the README's overview"
    assert 'href="pipeline/"' in home
    datasets = (site / "datasets" / "index.html").read_text(encoding="utf-8")
    assert "data/mine/interactions.csv" in datasets, "docs/datasets.md no longer includes the README's own-data example"
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    for name in ("molar_core.recommender.Recommender", "recommend_many", "molar_core.ranking",
                 "molar_core.metrics", "molar_core.popularity", "molar_core.models.sasrec",
                 "molar_core.models.content", "molar_core.models.molar"):
        assert name in reference, f"the API reference lacks {name}"
    api = (site / "python-api" / "index.html").read_text(encoding="utf-8")
    assert 'href="../pipeline/#using-the-results"' in api


@pytest.mark.parametrize("link", ["[a page that does not exist](no-such-page.md)",
                                  "[a section that does not exist](results.md#no-such-section)",
                                  "[the README, outside docs/](../README.md)"])
def test_a_broken_link_fails_the_strict_build(tmp_path, link):
    assert not _missing_modules(), f"site builder modules missing: {_missing_modules()}"
    config = copy_sources(tmp_path / "src")
    page = config.parent / "docs" / "guarantees.md"
    page.write_text(page.read_text(encoding="utf-8") + f"\nSee {link}.\n", encoding="utf-8")
    result = build(config, tmp_path / "site")
    target = link.split("](")[1].rstrip(")")
    assert result.returncode != 0, f"a strict build with {target} in guarantees.md passed:\n{result.stdout}"
    assert "guarantees.md" in result.stdout and target.split("#")[-1] in result.stdout, result.stdout
