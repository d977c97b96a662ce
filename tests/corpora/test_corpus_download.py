"""Fetching corpora over real HTTP from a server on 127.0.0.1: success, 404, checksum, cut-off, cache."""
from __future__ import annotations

import json
import os

import pytest

from corpus_helpers import FixtureServer, entry, registry, source
from lstm_engine.corpora import registry as corpora
from lstm_engine.errors import UserError

TEXT = ("To be, or not to be, that is the question:\n" * 50).encode("utf-8")


@pytest.fixture
def server():
    s = FixtureServer()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("LSTM_ENGINE_CACHE", str(d))
    monkeypatch.delenv("LSTM_ENGINE_BASE_URL", raising=False)
    monkeypatch.delenv("LSTM_ENGINE_REGISTRY", raising=False)
    return d


def cache_files(cache):
    return sorted(os.path.relpath(os.path.join(d, f), cache) for d, _, fs in os.walk(cache) for f in fs)


def test_fetch_downloads_verifies_and_caches(server, cache):
    server.files["/data/play.txt"] = TEXT
    reg = registry(entry("play", server.url, [source("data/play.txt", TEXT)]))
    path = corpora.fetch("play", registry=reg, quiet=True)
    assert open(path, "rb").read() == TEXT
    assert server.hits == ["/data/play.txt"]
    manifest = json.loads((cache / "corpora" / "play.json").read_text())
    assert manifest["chars"] == len(TEXT) and manifest["symbols"] == len(set(TEXT.decode()))
    assert [r["status"] for r in corpora.listing(reg) if r["name"] == "play"] == ["cached"]


def test_second_fetch_is_served_from_the_cache(server):
    server.files["/data/play.txt"] = TEXT
    reg = registry(entry("play", server.url, [source("data/play.txt", TEXT)]))
    first = corpora.load_text("play", registry=reg, quiet=True)
    server.close()                                   # nothing may be requested any more
    second = corpora.load_text("play", registry=reg, quiet=True)
    assert first == second == TEXT.decode()
    assert server.hits == ["/data/play.txt"]


def test_404_gives_a_one_line_error_and_leaves_nothing(server, cache):
    reg = registry(entry("gone", server.url, [source("data/gone.txt", TEXT)]))
    with pytest.raises(UserError) as e:
        corpora.load_text("gone", registry=reg, quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and "HTTP 404" in msg
    assert "corpus fetch gone --from FILE" in msg and "--corpus PATH" in msg
    assert cache_files(cache) == []


def test_checksum_mismatch_is_rejected(server, cache):
    wrong = TEXT.replace(b"question", b"QUESTION")   # same size, other bytes
    server.files["/data/play.txt"] = wrong
    reg = registry(entry("play", server.url, [source("data/play.txt", TEXT)]))
    with pytest.raises(UserError, match="sha256 mismatch"):
        corpora.fetch("play", registry=reg, quiet=True)
    assert cache_files(cache) == []


def test_transfer_cut_off_midway_leaves_no_file(server, cache):
    server.files["/data/play.txt"] = TEXT
    server.cut.add("/data/play.txt")
    reg = registry(entry("play", server.url, [source("data/play.txt", TEXT)]))
    with pytest.raises(UserError, match="cut off"):
        corpora.fetch("play", registry=reg, quiet=True)
    assert cache_files(cache) == []
    server.cut.clear()                               # the next try succeeds and is complete
    assert open(corpora.fetch("play", registry=reg, quiet=True), "rb").read() == TEXT


def test_env_base_url_overrides_the_real_registry(server, cache, monkeypatch):
    """tinyshakespeare from the built-in registry, pointed at the local server: wrong file is refused."""
    server.files["/data/tinyshakespeare/input.txt"] = TEXT
    monkeypatch.setenv("LSTM_ENGINE_BASE_URL", server.url + "/")
    with pytest.raises(UserError) as e:
        corpora.fetch("tinyshakespeare", quiet=True)
    assert server.hits == ["/data/tinyshakespeare/input.txt"]
    assert f"expected {1115394:,}" in str(e.value) and server.url in str(e.value)
    assert cache_files(cache) == []


def test_verified_sources_survive_a_failed_multi_file_fetch(server):
    a, b = "第一。\n".encode(), "第二。\n".encode()
    server.files["/詩/a.txt"] = a
    reg = registry(entry("two", server.url, [source("詩/a.txt", a), source("詩/b.txt", b)]))
    with pytest.raises(UserError, match="HTTP 404") as e:
        corpora.fetch("two", registry=reg, quiet=True)
    assert "--from FOLDER" in str(e.value)
    server.files["/詩/b.txt"] = b
    assert corpora.load_text("two", registry=reg, quiet=True) == "第一。\n第二。\n"
    assert server.hits == ["/詩/a.txt", "/詩/b.txt", "/詩/b.txt"]     # a.txt was not fetched twice


def test_damaged_cached_text_is_not_trusted(server, cache):
    server.files["/data/play.txt"] = TEXT
    reg = registry(entry("play", server.url, [source("data/play.txt", TEXT)]))
    path = corpora.fetch("play", registry=reg, quiet=True)
    with open(path, "r+b") as f:
        f.write(b"XX")
    assert corpora.cached_path(corpora.get_entry("play", reg)) is None
    assert corpora.load_text("play", registry=reg, quiet=True) == TEXT.decode()   # remade from the source
    assert len(server.hits) == 1


def test_fetch_from_a_local_copy(tmp_path):
    folder = tmp_path / "checkout" / "data"
    folder.mkdir(parents=True)
    (folder / "play.txt").write_bytes(TEXT)
    reg = registry(entry("play", "http://127.0.0.1:9/", [source("data/play.txt", TEXT)]))
    path = corpora.fetch("play", registry=reg, from_path=str(tmp_path / "checkout"), quiet=True)
    assert open(path, "rb").read() == TEXT
    (tmp_path / "bad.txt").write_bytes(TEXT[:-1] + b"?")
    reg2 = registry(entry("play2", "http://127.0.0.1:9/", [source("data/play.txt", TEXT + b"x")]))
    with pytest.raises(UserError, match="is not the pinned"):
        corpora.fetch("play2", registry=reg2, from_path=str(tmp_path / "bad.txt"), quiet=True)
