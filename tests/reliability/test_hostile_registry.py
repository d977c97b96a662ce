"""Registry and cache: unsafe corpus names, registry entries of the wrong types (through a registry file,
as LSTM_ENGINE_REGISTRY or registry=), a cached text that differs from its pinned sha256, and a server
that drips its bytes (the total download deadline)."""
import hashlib
import http.server
import json
import os
import threading
import time
import urllib.parse

import pytest

from lstm_engine.corpora import download
from lstm_engine.corpora import registry as corpora
from lstm_engine.errors import UserError

from helpers import assert_one_line_error, run_cli
from hostile_helpers import deadline

TEXT = ("Tomorrow, and tomorrow, and tomorrow,\n" * 40).encode("utf-8")


def source(path, data):
    return {"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def entry(name, base_url, sources, **extra):
    return dict({"name": name, "description": "test corpus", "language": "en", "license": "CC0 (test data)",
                 "base_url": base_url, "sources": sources, "convert": {"kind": "text", "rule": "as is"}}, **extra)


def registry(*entries):
    return {"format": 1, "corpora": list(entries)}


class Server:
    """Files (URL path -> bytes) over HTTP on 127.0.0.1; drip: paths sent one byte a second."""

    def __init__(self):
        self.files, self.drip, self.stop = {}, {}, threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                body = outer.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                where = outer.drip.get(path)
                try:
                    if where == "headers":              # the status line, then the headers byte by byte
                        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                        self._drip(b"X-Slow: " + b"s" * 100 + b"\r\n")
                        return
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self._drip(body) if where == "body" else self.wfile.write(body)
                except OSError:
                    pass                                # the client gave up: what the test wants

            def _drip(self, data):
                for k in range(len(data)):
                    if outer.stop.wait(1.0):
                        return
                    self.wfile.write(data[k:k + 1])
                    self.wfile.flush()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LSTM_ENGINE_BASE_URL", raising=False)
    monkeypatch.delenv("LSTM_ENGINE_REGISTRY", raising=False)
    return tmp_path / "cache"


def files_under(d):
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


# -- names ----------------------------------------------------------------------------------------------
UNSAFE = ["../escape", "a/b", ".hidden", "..", "Upper", "x" * 65, "", "a\\b", "name.txt", " lead", "ü"]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_names_asked_for_are_refused(name):
    with pytest.raises(UserError, match="is not a corpus name"):
        corpora.get_entry(name)
    with pytest.raises(UserError, match="is not a corpus name"):
        corpora.text_path(name)


@pytest.mark.parametrize("name", ["../escape", ".hidden", "sub/dir", "Upper"])
def test_unsafe_names_in_a_registry_file_are_refused(tmp_path, server, cache, monkeypatch, name):
    """An entry whose name would be a path in the cache never gets that far: the registry file is refused."""
    server.files["/t.txt"] = TEXT
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps(registry(entry(name, server.url, [source("t.txt", TEXT)]))), encoding="utf-8")
    monkeypatch.setenv("LSTM_ENGINE_REGISTRY", str(reg))
    for args in (["corpus", "list"], ["corpus", "fetch", name]):
        assert_one_line_error(run_cli(args), "not a corpus name")
    assert not os.path.exists(tmp_path / "escape.txt") and files_under(tmp_path / "cache") == []


# -- entry types --------------------------------------------------------------------------------------------
def _set(e, dotted, value):
    *path, last = dotted.split(".")
    for k in path:
        e = e[int(k)] if isinstance(e, list) else e[k]
    if isinstance(e, list):
        e[int(last)] = value
    else:
        e[last] = value


BAD_FIELDS = [("base_url", 5, "base_url"), ("base_url", "file:///etc/", "base_url"),
              ("sources", "t.txt", "sources"), ("sources", [], "sources"), ("sources.0", "t.txt", "sources[0]"),
              ("sources.0.sha256", "abc", "sources[0].sha256"), ("sources.0.sha256", 7, "sources[0].sha256"),
              ("sources.0.bytes", "12", "sources[0].bytes"), ("sources.0.bytes", True, "sources[0].bytes"),
              ("sources.0.bytes", -1, "sources[0].bytes"), ("sources.0.path", 3, "sources[0].path"),
              ("sources.0.path", "../../t.txt", "sources[0].path"), ("sources.0.path", "/abs", "sources[0].path"),
              ("convert", "text", "convert"), ("convert.rule", ["as is"], "convert.rule"),
              ("description", 5, "description"), ("license", None, "license"), ("builtin", "yes", "builtin"),
              ("text", "pinned", "text"), ("text.sha256", "0" * 63, "text.sha256"), ("text.chars", 1.5, "text.chars")]


@pytest.mark.parametrize("field, value, needle", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_entries_of_the_wrong_types_are_refused_naming_entry_and_field(tmp_path, field, value, needle):
    e = entry("typed", "https://example.invalid/", [source("t.txt", TEXT)], text={"chars": len(TEXT)})
    _set(e, field, value)
    with pytest.raises(UserError) as err:
        corpora.load_registry(registry(e))
    msg = str(err.value)
    assert "\n" not in msg and "'typed'" in msg and needle in msg, msg
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps(registry(e)), encoding="utf-8")
    assert_one_line_error(run_cli(["corpus", "list"], env={"LSTM_ENGINE_REGISTRY": str(reg)}), needle)


def test_a_builtin_entry_with_a_bad_header_is_refused():
    e = {"name": "python-source", "description": "d", "language": "py", "license": "PSF", "builtin": True,
         "convert": {"kind": "python-stdlib", "header": "# {0} {path}\n", "max_chars": 100}}
    with pytest.raises(UserError, match="convert.header"):
        corpora.load_registry(registry(e))


# -- the cached text against its pinned sha256 -----------------------------------------------------------
def pinned_entry(server):
    server.files["/t.txt"] = TEXT
    return entry("pinned", server.url, [source("t.txt", TEXT)],
                 text={"chars": len(TEXT), "sha256": hashlib.sha256(TEXT).hexdigest()})


def test_a_damaged_cached_text_is_reported_and_kept(server):
    """A cached text that no longer matches the pinned sha256 (its manifest rewritten to agree with it, or
    not) is one line saying it is damaged and how to fetch it again; the file is left as it is."""
    reg = registry(pinned_entry(server))
    path = corpora.fetch("pinned", registry=reg, quiet=True)
    damaged = TEXT.replace(b"Tomorrow", b"Yesterday")
    with open(path, "wb") as f:
        f.write(damaged)
    manifest = path[:-4] + ".json"
    for rewrite in (False, True):
        if rewrite:                                  # a manifest that agrees with the damaged text
            m = json.load(open(manifest, encoding="utf-8"))
            m["sha256"] = hashlib.sha256(damaged).hexdigest()
            json.dump(m, open(manifest, "w", encoding="utf-8"))
        with pytest.raises(UserError) as err:
            corpora.load_text("pinned", registry=reg, quiet=True)
        msg = str(err.value)
        assert "\n" not in msg and "damaged" in msg and "corpus fetch pinned --force" in msg
        assert open(path, "rb").read() == damaged                     # not deleted or remade silently
    assert open(corpora.fetch("pinned", registry=reg, force=True, quiet=True), "rb").read() == TEXT


def test_a_conversion_that_differs_from_the_pin_is_not_cached(server, cache):
    e = pinned_entry(server)
    e["text"]["sha256"] = hashlib.sha256(b"another text").hexdigest()
    with pytest.raises(UserError, match="not the pinned"):
        corpora.fetch("pinned", registry=registry(e), quiet=True)
    assert not any(p.startswith("corpora") for p in files_under(cache))


# -- the download deadline ----------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_dripping_server_fails_within_the_deadline(server, cache, monkeypatch, where):
    """One byte a second never trips the per-read timeout; the total deadline ends the fetch with one
    line, and nothing is left that could pass for the source."""
    server.files["/slow.txt"] = TEXT
    server.drip["/slow.txt"] = where
    monkeypatch.setattr(download, "DEADLINE_S", 2.0)
    reg = registry(entry("slow", server.url, [source("slow.txt", TEXT)]))
    t0 = time.monotonic()
    with deadline(30), pytest.raises(UserError) as err:
        corpora.fetch("slow", registry=reg, quiet=True)
    took = time.monotonic() - t0
    msg = str(err.value)
    assert "\n" not in msg and "2 s deadline" in msg and "corpus fetch slow --from FILE" in msg, msg
    assert took < 2.0 + 3.0, took
    assert files_under(cache) == []


def test_the_deadline_is_a_parameter_too(server, tmp_path):
    server.files["/slow.txt"] = TEXT
    server.drip["/slow.txt"] = "body"
    with deadline(30), pytest.raises(download.DownloadError, match="1.5 s deadline"):
        download.download(server.url + "/slow.txt", str(tmp_path / "x"), len(TEXT),
                          hashlib.sha256(TEXT).hexdigest(), deadline=1.5)
    assert os.listdir(tmp_path) == []
