"""Atomic writes: a reader sees the old file or the new one, never a part; a killed writer's leftovers go away."""

from __future__ import annotations

import errno
import os

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


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_disk_or_read_only_output_is_a_clear_error_and_keeps_previous_artifacts(ml_small, tmp_path, monkeypatch,
                                                                                    code):
    """The prepare stage on a disk that refuses writes: one error naming the file; the last good outputs stay."""
    import molar_core.io as io_mod
    from molar_core.errors import OutputError
    from stages import prepare
    from tests.conftest import small_params

    p = small_params(ml_small).prepare
    prepare.run(p, tmp_path)
    before = {f.name: f.read_bytes() for f in (tmp_path / "data/prepared").iterdir()}
    real_replace = os.replace

    def refuse(src, dst):
        if str(dst).endswith(".parquet"):
            raise OSError(code, os.strerror(code))
        return real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", refuse)
    with pytest.raises(OutputError, match=rf"items.parquet: cannot write \({os.strerror(code)}\)"):
        prepare.run(p.model_copy(update={"min_rating": 4}), tmp_path)
    monkeypatch.undo()
    assert {f.name: f.read_bytes() for f in (tmp_path / "data/prepared").iterdir()} == before
