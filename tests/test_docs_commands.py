"""Every `dvc exp run -S section.key=value` that README.md and docs/*.md show validates against the params schema,
so a renamed or retyped key cannot leave a documented command that fails (or, worse, one DVC accepts and the
stage rejects later)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.params import ParamsError, dotted_overrides, load_params

ROOT = Path(__file__).parents[1]
SETTING = re.compile(r"-S\s+'?([A-Za-z_][\w.]*=[^'\s`]+)'?")


def documented_settings(text: str) -> list[list[str]]:
    """The -S settings of each command (a command continued with a trailing backslash is one command)."""
    commands, current = [], []
    for line in text.splitlines():
        current += SETTING.findall(line)
        if not line.rstrip().endswith("\\"):
            if current:
                commands.append(current)
            current = []
    return commands


def check(settings: list[str]) -> None:
    load_params(ROOT / "params.yaml", overrides=dotted_overrides(settings))


def test_every_documented_setting_validates():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = {page.name: documented_settings(page.read_text()) for page in pages}
    assert len(found["README.md"]) >= 3 and sum(map(len, found.values())) >= 15, found
    for page, commands in found.items():
        for settings in commands:
            try:
                check(settings)
            except ParamsError as err:
                pytest.fail(f"{page}: `-S {' -S '.join(settings)}` does not validate: {err}")


def test_the_check_catches_an_unknown_key_and_a_wrong_type():
    [settings] = documented_settings("dvc exp run -S train_id.lr=0.01 \\\n   -S train_id.lrr=0.01\n")
    assert settings == ["train_id.lr=0.01", "train_id.lrr=0.01"]
    with pytest.raises(ParamsError, match="lrr"):
        check(settings)
    with pytest.raises(ParamsError, match="max_epochs"):
        check(["train_id.max_epochs=many"])
