"""`lstm-engine explore --html FILE --text TEXT`: the explorer's page with the numbers of one text baked in.

The same page, script and style as the server's, inlined into one file, with every answer the page
can ask about that text computed now by compute.Explorer (each step, the influence at every
position, the unit rankings), rounded to 6 significant digits.  Pattern search and sampling need
the server; the saved page says so when asked.

Dimension legend: N characters of the text.
"""
from __future__ import annotations

import json

from ...errors import UserError
from ...storage.atomic import atomic_write_bytes
from .compute import Explorer
from .server import asset

MAX_HTML_CHARS = 200            # every step is baked in: the page grows with N·L·14H numbers (N² for influence)
DIGITS = 6


def _rounded(obj):
    if isinstance(obj, float):
        return float(f"{obj:.{DIGITS}g}")
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return obj


def baked(explorer, text):
    """Every answer the page asks for `text` -> one JSON-ready dict."""
    if not 2 <= len(text) <= MAX_HTML_CHARS:
        raise UserError(f"--text must have 2 to {MAX_HTML_CHARS} characters for --html (got {len(text)}): every "
                        f"step is stored in the page; run `lstm-engine explore` for longer texts")
    N, info = len(text), explorer.info()
    rank = {}
    for kind in info["kinds"]:
        for feature in [None] + list(info["features"]):
            try:
                rank[f"{kind}/{feature or ''}"] = explorer.rank(text, kind, feature)
            except UserError as e:              # a feature that never changes on this text
                rank[f"{kind}/{feature or ''}"] = {"error": str(e)}
    return _rounded({"text": text, "info": info, "run": explorer.summary(text),
                     "steps": [explorer.step(text, t) for t in range(N)],
                     "influence": [explorer.influence(text, t) for t in range(N - 1)], "rank": rank})


def page(data):
    """index.html with the style, the data and the script inlined."""
    html = asset("index.html").decode("utf-8")
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    style = asset("style.css").decode("utf-8")
    script = asset("app.js").decode("utf-8")
    for old, new in (('<link rel="stylesheet" href="static/style.css">', f"<style>\n{style}</style>"),
                     ('<script src="static/app.js"></script>',
                      f"<script>window.EXPLORER_BAKED = {blob};</script>\n<script>\n{script}</script>")):
        if old not in html:
            raise AssertionError(f"index.html lost its {old!r}")
        html = html.replace(old, new)
    return html


def write_page(path, out_html, text):
    """Load the checkpoint, bake `text` in, write out_html atomically.  -> dict(path, chars, bytes)."""
    if text is None:
        raise UserError("--html needs --text TEXT: the page holds the numbers of that text")
    data = page(baked(Explorer(path), text)).encode("utf-8")
    try:
        atomic_write_bytes(out_html, data)
    except OSError as e:
        raise UserError(f"could not write {out_html!r}: {e.strerror or e}") from None
    return {"path": out_html, "chars": len(text), "bytes": len(data)}
