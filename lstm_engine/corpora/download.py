"""Verified, atomic downloads: the only module of lstm_engine that touches the network.

A file is fetched into a temporary file beside its destination, hashed while it streams,
checked against the pinned size and sha256, and only then renamed into place.  An interrupted,
cut-off, oversized or corrupted transfer leaves nothing at the destination.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

from ..storage.atomic import atomic_file

CHUNK = 1 << 16          # bytes per read
TIMEOUT_S = 30           # per blocking socket operation, not for the whole transfer
DEADLINE_S = 600         # for one file's whole transfer: a server dripping bytes cannot hold a fetch for ever
USER_AGENT = "lstm-engine (corpus download)"


class DownloadError(Exception):
    """A transfer failed or delivered the wrong bytes; str() is one short line "URL: reason"."""

    def __init__(self, url, reason):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


def sha256_file(path):
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path, size, sha256):
    """Raise DownloadError unless the file at `path` has exactly `size` bytes and this sha256."""
    actual = os.path.getsize(path)
    if actual != size:
        raise DownloadError(path, f"{actual:,} bytes, expected {size:,}")
    digest = sha256_file(path)
    if digest != sha256:
        raise DownloadError(path, f"sha256 {digest[:16]}..., expected {sha256[:16]}...")


class _Deadline:
    """Shuts down every socket a download opened once `seconds` have passed: a blocked read (headers
    or body) then returns at once, and `passed` tells the caller why."""

    def __init__(self, seconds):
        self.seconds, self.end, self.socks, self.passed = seconds, None, [], False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def start(self):
        self.end = time.monotonic() + self.seconds
        self._timer.start()

    def stop(self):
        self._timer.cancel()

    def _fire(self):
        self.passed = True
        for sock in self.socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def check(self, url):
        if self.passed or time.monotonic() > self.end:
            self.passed = True
            raise DownloadError(url, f"not complete within the {self.seconds:g} s deadline (a slow or stalled "
                                     f"server)")

    def opener(self):
        """A urllib opener whose HTTP(S) connections register their sockets here."""
        socks = self.socks

        def recording(cls):
            class Recording(cls):
                def connect(self):
                    super().connect()
                    socks.append(self.sock)
            return Recording

        class HTTP(urllib.request.HTTPHandler):
            def do_open(self, http_class, req, **kw):
                return super().do_open(recording(http_class), req, **kw)

        class HTTPS(urllib.request.HTTPSHandler):
            def do_open(self, http_class, req, **kw):
                return super().do_open(recording(http_class), req, **kw)
        return urllib.request.build_opener(HTTP, HTTPS)


def _stream(resp, f, size, url, progress, deadline):
    """Copy the response body into f, hashing it; -> (bytes read, hex sha256)."""
    h, n = hashlib.sha256(), 0
    while True:
        deadline.check(url)
        try:
            block = resp.read1(CHUNK)          # returns what has arrived: the deadline is checked between reads
        except http.client.IncompleteRead as e:
            deadline.check(url)
            raise DownloadError(url, f"transfer cut off after {n + len(e.partial):,} of {size:,} bytes") from None
        if not block:
            return n, h.hexdigest()
        n += len(block)
        if n > size:
            raise DownloadError(url, f"server sent more than the expected {size:,} bytes")
        h.update(block)
        f.write(block)
        if progress:
            progress(len(block))


def download(url, dest, size, sha256, progress=None, timeout=TIMEOUT_S, deadline=None):
    """Fetch `url` to `dest`, verified against `size` bytes and `sha256`; atomic.

    progress(n_bytes) is called as bytes arrive.  timeout: seconds a blocking read may wait;
    deadline (default DEADLINE_S): seconds for the whole transfer.  Raises DownloadError (never
    leaving `dest` or a temporary file behind) on any HTTP, network, size, time or checksum failure.
    """
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    limit = _Deadline(DEADLINE_S if deadline is None else deadline)
    with atomic_file(dest, make_dirs=True) as (f, _):
        limit.start()
        try:
            n, digest = _transfer(req, f, url, size, progress, min(timeout, limit.seconds), limit)
        finally:
            limit.stop()
        if n != size:
            limit.check(url)
            raise DownloadError(url, f"transfer cut off after {n:,} of {size:,} bytes")
        if digest != sha256:
            raise DownloadError(url, f"sha256 mismatch (got {digest[:16]}..., expected {sha256[:16]}...)")


def _transfer(req, f, url, size, progress, timeout, limit):
    """Open the URL and stream its body into f -> (bytes, hex sha256); failures as DownloadError."""
    try:
        with limit.opener().open(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != size:
                raise DownloadError(url, f"server offers {int(length):,} bytes, expected {size:,}")
            return _stream(resp, f, size, url, progress, limit)
    except urllib.error.HTTPError as e:
        raise DownloadError(url, f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, http.client.HTTPException, ConnectionError) as e:
        limit.check(url)                       # a socket shut at the deadline fails in any of these ways
        if isinstance(e, urllib.error.URLError):
            raise DownloadError(url, str(e.reason)) from None
        if isinstance(e, (socket.timeout, TimeoutError)):
            raise DownloadError(url, f"timed out after {timeout:g} s without data") from None
        raise DownloadError(url, f"{type(e).__name__}: {e}") from None


def copy_verified(src, dest, size, sha256):
    """Copy a local file to `dest` after checking its size and sha256; atomic like download()."""
    verify_file(src, size, sha256)
    with atomic_file(dest, make_dirs=True) as (f, tmp), open(src, "rb") as s:
        shutil.copyfileobj(s, f, CHUNK)
        f.flush()
        verify_file(tmp, size, sha256)           # the copy, not just the original
