"""Atomic writes: a reader sees the old file or the new one, never a part; a killed writer's leftovers go away."""

from __future__ import annotations

import pytest

from molar_core.io import atomic_dir, atomic_path, write_bytes_atomic


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "metrics.json"
    (tmp_path / ".metrics.json.abc123.tmp").write_bytes(b"partial")  # what SIGKILL mid-write leaves
    (tmp_path / ".other.json.abc123.tmp").write_bytes(b"someone else's")
    write_bytes_atomic(target, b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.abc123.tmp", "metrics.json"]
    d = tmp_path / "model"
    (tmp_path / ".model.x1.tmp").mkdir()
    (tmp_path / ".model.old-999").mkdir()
    with atomic_dir(d) as tmp:
        (tmp / "config.json").write_text("{}")
    assert not (tmp_path / ".model.x1.tmp").exists() and not (tmp_path / ".model.old-999").exists()
    assert (d / "config.json").exists()
