"""Test helpers for corpora: a real HTTP server on 127.0.0.1 and registry entries for fixture files."""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse


class FixtureServer:
    """Serves `files` (URL path -> bytes) on 127.0.0.1:<free port> from a thread.

    Paths in `cut` get their full Content-Length header but only half the body before the
    connection closes.  `hits` records every requested path.
    """

    def __init__(self):
        self.files, self.cut, self.hits = {}, set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                server.hits.append(path)
                body = server.files.get(path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if path in server.cut else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def source(path, data):
    return {"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def entry(name, base_url, sources, convert=None):
    return {"name": name, "description": f"fixture corpus {name}", "language": "test", "license": "CC0 (test data)",
            "base_url": base_url, "sources": sources, "convert": convert or {"kind": "text", "rule": "as is"}}


def registry(*entries):
    return {"format": 1, "corpora": list(entries)}


def poems_json(bodies):
    """A chinese-poetry style JSON file (bytes) holding these poem bodies, one paragraph per couplet."""
    poems = []
    for k, body in enumerate(bodies):
        paras, cur = [], ""
        for ch in body:
            cur += ch
            if ch == "。":
                paras.append(cur)
                cur = ""
        if cur:
            paras.append(cur)
        poems.append({"author": "佚名", "paragraphs": paras, "title": f"詩{k}", "id": f"id-{k}"})
    return json.dumps(poems, ensure_ascii=False, indent=2).encode("utf-8")
