"""attach_images: files keyed by id, paths confined to a root, size bounds, URL download and cache.

URLs are served by a local http.server on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import polars as pl
import pytest

from molar_core.data.images import ImageConfig, attach_images
from molar_core.errors import DataError


def items(ids, images=None) -> pl.DataFrame:
    ids = [str(i) for i in ids]
    return pl.DataFrame(
        {
            "item": pl.Series(ids, dtype=pl.String),
            "title": pl.Series([f"T{i}" for i in ids], dtype=pl.String),
            "image": pl.Series(images if images is not None else [None] * len(ids), dtype=pl.String),
        }
    )


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """urllib must reach 127.0.0.1 directly, whatever proxy the environment configures."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


# ------------------------------------------------------------------------------------------------ directory


def test_directory_keyed_by_id(tmp_path):
    d = tmp_path / "posters"
    put(d / "1.jpg", b"one")
    put(d / "3.jpg", b"three")
    put(d / "2.png", b"wrong extension")
    df = items(["1", "2", "3", "4"])
    out, counts = attach_images(df, ImageConfig(dir=str(d)), items_file=None)
    assert out["image_path"].to_list() == [str((d / "1.jpg").resolve()), None, str((d / "3.jpg").resolve()), None]
    assert counts == {"no_image": 2}
    assert out.drop("image_path").equals(df)  # the input columns are untouched
    assert out.schema["image_path"] == pl.String


def test_directory_with_pattern(tmp_path):
    d = tmp_path / "imgs"
    put(d / "poster_a.png", b"a")
    put(d / "sub" / "poster_b.png", b"b")
    out, counts = attach_images(items(["a", "b"]), ImageConfig(dir=str(d), pattern="poster_{item_id}.png"), None)
    assert out["image_path"].to_list() == [str((d / "poster_a.png").resolve()), None]
    assert counts == {"no_image": 1}
    out, counts = attach_images(items(["b"]), ImageConfig(dir=str(d), pattern="sub/poster_{item_id}.png"), None)
    assert out["image_path"].to_list() == [str((d / "sub" / "poster_b.png").resolve())]
    assert counts == {}


def test_empty_and_oversized_files_are_counted_and_missing(tmp_path):
    d = tmp_path / "posters"
    put(d / "ok.jpg", b"x" * 10)
    put(d / "empty.jpg", b"")
    put(d / "big.jpg", b"x" * 11)
    (d / "dir.jpg").mkdir()  # a directory is not an image
    out, counts = attach_images(
        items(["ok", "empty", "big", "dir", "none"]), ImageConfig(dir=str(d), max_bytes=10), None
    )
    assert out["image_path"].to_list() == [str((d / "ok.jpg").resolve()), None, None, None, None]
    assert counts == {"empty_file": 1, "too_large": 1, "no_image": 2}


def test_missing_directory_fails(tmp_path):
    with pytest.raises(DataError, match="image directory not found") as err:
        attach_images(items(["1"]), ImageConfig(dir=str(tmp_path / "nope")), None)
    assert err.value.file == str(tmp_path / "nope")


@pytest.mark.parametrize("pattern", ["../{item_id}.jpg", "sub/../../{item_id}.jpg", "/etc/{item_id}"])
def test_pattern_escaping_the_directory_fails(tmp_path, pattern):
    d = tmp_path / "posters"
    d.mkdir()
    put(tmp_path / "1.jpg", b"outside")
    with pytest.raises(DataError, match="escapes the image root") as err:
        attach_images(items(["1"]), ImageConfig(dir=str(d), pattern=pattern), None)
    assert "'1'" in str(err.value)


def test_item_id_escaping_the_directory_fails(tmp_path):
    d = tmp_path / "posters"
    d.mkdir()
    put(tmp_path / "secret.jpg", b"outside")
    with pytest.raises(DataError, match="escapes"):
        attach_images(items(["ok", "../secret"]), ImageConfig(dir=str(d)), None)


# ------------------------------------------------------------------------------------------------ path column


def test_path_column_relative_to_items_file_dir(tmp_path):
    data = tmp_path / "data"
    put(data / "imgs" / "a.jpg", b"a")
    put(data / "imgs" / "c.jpg", b"")
    items_file = data / "items.csv"
    df = items(["a", "b", "c", "d", "e"], ["imgs/a.jpg", None, "imgs/c.jpg", "   ", "imgs/missing.jpg"])
    out, counts = attach_images(df, ImageConfig(), str(items_file))
    assert out["image_path"].to_list() == [str((data / "imgs" / "a.jpg").resolve()), None, None, None, None]
    assert counts == {"no_image": 3, "empty_file": 1}


def test_path_column_with_explicit_root(tmp_path):
    root = tmp_path / "root"
    put(root / "x" / "a.jpg", b"a")
    df = items(["a", "b"], ["x/a.jpg", str((root / "x" / "a.jpg").resolve())])  # absolute inside the root is fine
    out, counts = attach_images(df, ImageConfig(root=str(root)), str(tmp_path / "elsewhere" / "items.csv"))
    assert out["image_path"].to_list() == [str((root / "x" / "a.jpg").resolve())] * 2
    assert counts == {}


@pytest.mark.parametrize("escaping", ["../secret.jpg", "imgs/../../secret.jpg", "ABS"])
def test_path_escaping_root_names_file_and_row(tmp_path, escaping):
    data = tmp_path / "data"
    put(data / "imgs" / "a.jpg", b"a")
    secret = put(tmp_path / "secret.jpg", b"secret")
    ref = str(secret.resolve()) if escaping == "ABS" else escaping
    items_file = str(data / "items.csv")
    df = items(["a", "b", "c"], ["imgs/a.jpg", None, ref])
    with pytest.raises(DataError, match="escapes the image root") as err:
        attach_images(df, ImageConfig(), items_file)
    assert (err.value.file, err.value.row, err.value.column) == (items_file, 3, "image")
    assert items_file in str(err.value) and "row 3" in str(err.value)
    # with item_rows, the row is the file line given by the adapter
    with pytest.raises(DataError) as err:
        attach_images(df, ImageConfig(), items_file, item_rows=[2, 5, 9])
    assert err.value.row == 9


def test_symlink_out_of_the_root_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    secret = put(tmp_path / "secret.jpg", b"secret")
    (data / "link.jpg").symlink_to(secret)
    with pytest.raises(DataError, match="escapes"):
        attach_images(items(["a"], ["link.jpg"]), ImageConfig(), str(data / "items.csv"))


# ------------------------------------------------------------------------------------------------ URLs


class Server:
    def __init__(self, root: Path):
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_request(self, *args) -> None:  # once per request
                requests.append(self.path)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)
            self.running = False


@pytest.fixture
def server(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    srv = Server(www)
    srv.www = www
    yield srv
    srv.stop()


def test_urls_download_into_cache_and_cache_is_reused_offline(tmp_path, server):
    put(server.www / "p1.jpg", b"poster-1")
    put(server.www / "img" / "p2.png", b"poster-2")
    put(server.www / "empty.jpg", b"")
    put(server.www / "big.jpg", b"x" * 100)
    urls = [f"{server.base}/p1.jpg", f"{server.base}/img/p2.png", f"{server.base}/missing.jpg",
            f"{server.base}/empty.jpg", f"{server.base}/big.jpg", None]  # fmt: skip
    cache = tmp_path / "cache"
    cfg = ImageConfig(url_cache_dir=str(cache), max_bytes=50, timeout=5)
    df = items(["1", "2", "3", "4", "5", "6"], urls)

    out, counts = attach_images(df, cfg, str(tmp_path / "items.csv"))
    paths = out["image_path"].to_list()
    assert paths[2:] == [None] * 4
    assert Path(paths[0]).read_bytes() == b"poster-1" and Path(paths[1]).read_bytes() == b"poster-2"
    for p in paths[:2]:
        assert Path(p).parent == cache.resolve()
    assert Path(paths[0]).name == hashlib.sha256(urls[0].encode()).hexdigest()[:32] + ".jpg"
    assert Path(paths[1]).suffix == ".png"
    assert sorted(f.name for f in cache.iterdir()) == sorted(Path(p).name for p in paths[:2])  # no temp files
    failed = {k: v for k, v in counts.items() if k.startswith("download_failed")}
    assert sum(failed.values()) == 1  # the 404
    assert counts["empty_file"] == 1 and counts["too_large"] == 1 and counts["no_image"] == 1
    assert sum(counts.values()) == 4
    n_requests = len(server.requests)
    assert n_requests == 5

    # second call with the server gone: cached images are reused, no request is made
    server.stop()
    out2, counts2 = attach_images(df, cfg, str(tmp_path / "items.csv"))
    assert out2["image_path"].to_list() == paths
    assert len(server.requests) == n_requests
    failed2 = {k: v for k, v in counts2.items() if k.startswith("download_failed")}
    assert sum(failed2.values()) == 3  # missing, empty and big are fetched again and now fail to connect
    assert counts2["no_image"] == 1


def test_cache_dir_is_created(tmp_path, server):
    put(server.www / "a.jpg", b"a")
    cache = tmp_path / "deep" / "cache"
    out, counts = attach_images(items(["a"], [f"{server.base}/a.jpg"]),
                                ImageConfig(url_cache_dir=str(cache), timeout=5), None)  # fmt: skip
    assert counts == {} and Path(out["image_path"][0]).parent == cache.resolve()


@pytest.mark.parametrize("url", ["ftp://example.invalid/a.jpg", "file:///etc/passwd", "gopher://x/y"])
def test_disallowed_scheme_fails_with_row(tmp_path, url):
    items_file = str(tmp_path / "items.csv")
    df = items(["a", "b"], [None, url])
    with pytest.raises(DataError, match="scheme") as err:
        attach_images(df, ImageConfig(url_cache_dir=str(tmp_path / "cache")), items_file)
    assert (err.value.file, err.value.row, err.value.column) == (items_file, 2, "image")
    assert not (tmp_path / "cache").exists()


def test_scheme_allow_list_is_configurable(tmp_path, server):
    put(server.www / "a.jpg", b"a")
    cfg = ImageConfig(url_cache_dir=str(tmp_path / "cache"), url_schemes=["https"], timeout=5)
    with pytest.raises(DataError, match="'http' not allowed"):
        attach_images(items(["a"], [f"{server.base}/a.jpg"]), cfg, None)
