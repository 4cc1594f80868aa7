"""The tests' own data supply (tests/conftest.py): without ../shared/datasets, ML-100K comes from the package index
once and is cached; offline it skips naming what it tried, and under MOLAR_CI it fails instead. No network here:
the pip download is replaced."""

from __future__ import annotations

import functools
import shutil

import pytest

import molar_core.data.acquire as acquire
import tests.conftest as data
from molar_core.errors import MolarError


@pytest.fixture
def no_shared(monkeypatch, tmp_path):
    """conftest as on a clean clone: no shared copy, an empty cache, a fresh once-per-session memo."""
    monkeypatch.setattr(data, "ML100K", tmp_path / "shared" / "ml-100k")
    monkeypatch.setenv("MOLAR_TEST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_acquire_ml100k", functools.cache(data._acquire_ml100k.__wrapped__))
    return tmp_path


@pytest.fixture
def offline(no_shared, monkeypatch):
    calls = []

    def pip_download(spec, index_url, dest, timeout):
        calls.append(spec)
        raise MolarError("pip download exited 1: ERROR: Could not find a version (network unreachable)")

    monkeypatch.setattr(acquire, "_pip_download", pip_download)
    return calls


def test_offline_skips_naming_the_wheel_and_the_cache(offline, no_shared, monkeypatch):
    monkeypatch.setattr(data, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception) as err:
        data.ml100k_dir()
    why = str(err.value)
    assert "recbole==1.2.1" in why and str(no_shared / "cache") in why and "network unreachable" in why
    assert "grouplens" not in why.lower()  # the package index is the only host tried
    with pytest.raises(pytest.skip.Exception):
        data.ml100k_dir()
    assert offline == ["recbole==1.2.1"]  # tried once per session, not once per test


def test_offline_fails_in_ci(offline, monkeypatch):
    monkeypatch.setattr(data, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="MOLAR_CI") as err:
        data.ml100k_dir()
    assert "recbole==1.2.1" in str(err.value)


def test_a_verified_cached_copy_is_reused_without_the_index(ml100k, no_shared, monkeypatch):
    cached = no_shared / "cache" / "ml-100k" / "recbole" / "ml-100k"
    cached.mkdir(parents=True)
    for name in ("ml-100k.inter", "ml-100k.item"):
        shutil.copy(ml100k / name, cached / name)
    monkeypatch.setattr(acquire, "_pip_download", lambda *a: pytest.fail("the cache was not used"))
    assert data.ml100k_dir() == cached
    slice_dir = data.write_ml100k_slice(no_shared / "slice", users=3)
    assert sorted(f.name for f in slice_dir.iterdir()) == ["ml-small.inter", "ml-small.item"]


def test_a_cached_copy_with_other_contents_is_refused(ml100k, no_shared, monkeypatch):
    cached = no_shared / "cache" / "ml-100k" / "recbole" / "ml-100k"
    cached.mkdir(parents=True)
    shutil.copy(ml100k / "ml-100k.inter", cached / "ml-100k.inter")
    item = (ml100k / "ml-100k.item").read_text().replace("Toy Story", "Toy Storey")  # same size, other bytes
    (cached / "ml-100k.item").write_text(item)
    monkeypatch.setattr(data, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="ml-100k.item: SHA-256 differs"):
        data.ml100k_dir()
