"""The explorer's web server: the page, its two assets and the JSON API (docs/explorer.md).

Python's http.server, one thread per request; compute.Explorer answers every question, this module
only checks the request, calls it and writes JSON.  /api/generate streams one JSON object per line
as the characters come.  Bad input answers 4xx with {"error": "..."}: the server keeps running,
and it never writes to disk.  On a loopback address it answers only requests whose Host header
names it, and POSTs only as application/json, so another web page the browser shows cannot use it.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import math
import socket
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from ...errors import UserError
from .compute import Explorer

MAX_BODY = 64 * 1024            # bytes of one request: MAX_CHARS characters fit with room to spare
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/style.css": ("style.css", "text/css; charset=utf-8")}
_REQUIRED = object()
_KIND_NAMES = {str: "a string", int: "an integer", float: "a finite number", bool: "true or false",
               "units": "a list of integers"}


def asset(name):
    """The bytes of one of the page's files (package data under static/)."""
    return resources.files(__package__).joinpath("static", name).read_bytes()


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_warning(host):
    """The warning for binding elsewhere than a loopback address, or None."""
    if is_loopback(host):
        return None
    return (f"--host {host}: anyone who can reach this machine can use the explorer (and sample from the model); "
            f"loading other checkpoints by path is switched off. Leave --host out to listen on 127.0.0.1 only")


# -- the request's arguments -------------------------------------------------------------------------

def arg(body, name, kind, default=_REQUIRED):
    """body[name] checked to be of `kind` (str, int, float, bool, 'units'), or `default` where absent."""
    if name not in body or (body[name] is None and default is None):
        if default is _REQUIRED:
            raise UserError(f"the request needs {name!r}")
        return default
    v = body[name]
    ok = {str: isinstance(v, str), bool: isinstance(v, bool),
          int: isinstance(v, int) and not isinstance(v, bool),
          float: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          "units": isinstance(v, list) and all(isinstance(u, int) and not isinstance(u, bool) for u in v)}[kind]
    if not ok:
        raise UserError(f"{name} must be {_KIND_NAMES[kind]} (got {json.dumps(v)[:40]})")
    return float(v) if kind is float else v


def routes(app):
    """Path -> function(body) -> JSON-ready answer."""
    def ex():
        return app.explorer
    return {
        "/api/run": lambda b: ex().summary(arg(b, "text", str)),
        "/api/step": lambda b: ex().step(arg(b, "text", str), arg(b, "t", int)),
        "/api/activations": lambda b: ex().activations(arg(b, "text", str), arg(b, "layer", int),
                                                       arg(b, "kind", str, "h"), arg(b, "units", "units", None)),
        "/api/rank": lambda b: ex().rank(arg(b, "text", str), arg(b, "kind", str, "h"),
                                         arg(b, "feature", str, None), arg(b, "top", int, 10)),
        "/api/search": lambda b: ex().search(arg(b, "text", str), arg(b, "start", int), arg(b, "end", int),
                                             arg(b, "threshold", float), arg(b, "layer", int),
                                             arg(b, "kind", str, "h"), arg(b, "top", int, 20)),
        "/api/influence": lambda b: ex().influence(arg(b, "text", str), arg(b, "t", int)),
        "/api/load": app.load,
    }


def sampler_of(explorer, b):
    return explorer.sampler(arg(b, "prime", str, ""), arg(b, "length", int, 200), arg(b, "temperature", float, 1.0),
                            arg(b, "top_k", int, None), arg(b, "top_p", float, 1.0), arg(b, "seed", int, None),
                            arg(b, "greedy", bool, False))


class App:
    """What the handlers share: the explorer of the loaded checkpoint and which Host headers are ours."""

    def __init__(self, explorer, host, port):
        self.explorer = explorer
        self.loopback = is_loopback(host)
        self.hosts = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]", host)} if self.loopback else None
        self.routes = routes(self)

    def load(self, body):
        """Switch to another checkpoint; a file that does not load leaves the current one in place."""
        if not self.loopback:
            raise UserError("loading a checkpoint by path works only when the explorer listens on 127.0.0.1")
        self.explorer = Explorer(arg(body, "checkpoint", str))
        return self.explorer.info()


class Handler(BaseHTTPRequestHandler):
    server_version = "lstm-engine-explore"

    def log_message(self, format, *args):      # the terminal shows the URL and errors, not every request
        pass

    # -- answers ---------------------------------------------------------------------------------
    def _send(self, status, data, ctype):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status, obj):
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _host_ok(self):
        hosts = self.server.app.hosts
        if hosts is None or self.headers.get("Host", "") in hosts:
            return True
        self._json(403, {"error": "this explorer answers only pages it served itself (open the URL it printed)"})
        return False

    # -- requests --------------------------------------------------------------------------------
    def do_GET(self):
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        if path == "/api/info":
            return self._json(200, self.server.app.explorer.info())
        if path in ASSETS:
            name, ctype = ASSETS[path]
            return self._send(200, asset(name), ctype)
        self._json(404, {"error": f"no page {path!r} here; the explorer is at /"})

    def do_POST(self):
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        app = self.server.app
        body = self._body()
        if body is None:
            return
        if path == "/api/generate":
            return self._generate(body)
        fn = app.routes.get(path)
        if fn is None:
            return self._json(404, {"error": f"no API {path!r}; see docs/explorer.md for the list"})
        try:
            out = fn(body)
        except UserError as e:
            return self._json(400, {"error": str(e)})
        except Exception as e:                    # a bug: say so, keep serving
            traceback.print_exc(file=sys.stderr)
            return self._json(500, {"error": f"internal error ({type(e).__name__}: {e}); the server keeps running"})
        self._json(200, out)

    def _body(self):
        """The JSON object of a POST, or None after answering what is wrong with it."""
        if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
            self._json(415, {"error": "send the request as JSON (Content-Type: application/json)"})
            return None
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._json(411, {"error": "the request has no Content-Length"})
            return None
        if n > MAX_BODY:
            self._drain(n)
            self._json(413, {"error": f"the request has {n:,} bytes, more than the limit of {MAX_BODY:,}; "
                                      f"send a shorter text"})
            return None
        try:
            body = json.loads(self.rfile.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            body = None
        if not isinstance(body, dict):
            self._json(400, {"error": "the request body must be one JSON object"})
            return None
        return body

    def _drain(self, n, cap=16 * MAX_BODY):
        """Read (and drop) an oversized body, so the browser gets the answer rather than a reset connection."""
        self.close_connection = True
        left = min(n, cap)
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)

    def _generate(self, body):
        try:
            run = sampler_of(self.server.app.explorer, body)
        except UserError as e:
            return self._json(400, {"error": str(e)})
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.close_connection = True              # the end of the stream is the end of the connection

        def line(obj):
            self.wfile.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
            self.wfile.flush()
        try:
            text = run(lambda piece: line({"text": piece}))
            line({"done": True, "chars": len(text)})
        except (BrokenPipeError, ConnectionResetError):
            pass                                  # the page went away mid-sample
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            line({"error": f"internal error ({type(e).__name__}: {e}); the server keeps running"})


class ExploreServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app, host, port):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), Handler)
        self.app = app

    @property
    def checkpoint(self):
        return self.app.explorer.path

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def start(path, host="127.0.0.1", port=0):
    """Load the checkpoint and bind (port 0: a free one) -> the ExploreServer, not yet serving
    (call serve_forever, or serve_in_thread)."""
    explorer = Explorer(path)
    try:
        srv = ExploreServer(None, host, port)
    except OSError as e:
        what = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be used ({e.strerror or e})"
        raise UserError(f"{host}:{port} {what}; pick another --port, or leave it out for a free one") from None
    srv.app = App(explorer, host, srv.server_address[1])
    return srv


def serve_in_thread(srv):
    """Serve in a daemon thread -> the thread (stop with srv.shutdown(); srv.server_close())."""
    th = threading.Thread(target=srv.serve_forever, name="lstm-engine-explore", daemon=True)
    th.start()
    return th
