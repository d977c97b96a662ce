"""`lstm-engine inspect`: what the cells learned, as text coloured by one unit's activation.

The model reads the text as one stream from a zero state (Model.forward with the NumPy
reference backend, the code that trains it).  For every character we keep, per layer, h_t,
c_t and the gates the cell has (cells.kinds: the GRU has h, r, z, n), read from the reference
forward's cache.  A unit's activation after
reading character t colours character t, as in Karpathy's "quote-detecting cell" pictures.

--rank FEATURE correlates every unit with a simple feature of the text (inside quotes,
inside brackets, position in line, ...) and shows the units that track it best.

Dimension legend: N characters, L layers, H hidden, T chunk length.
"""
from __future__ import annotations

import html
import string

import numpy as np

from ..backends import numpy_backend as nb
from ..errors import UserError
from ..storage.atomic import atomic_write_bytes
from . import cells

KINDS = cells.kinds("lstm")          # h c i f g o: the LSTM's states (cells.kinds(cell) for the others)
OPEN, CLOSE = "([{", ")]}"
FEATURES = {
    "quotes": "inside double quotes",
    "brackets": "inside (), [] or {}",
    "depth": "bracket nesting depth",
    "line-pos": "position in the line (column)",
    "after-newline": "first character of a line",
    "space": "whitespace character",
    "alpha": "letter",
    "upper": "upper-case letter",
    "digit": "digit",
    "punct": "punctuation",
    "vowel": "vowel (aeiou)",
}


# ----------------------------------------------------------------------------
# Features of the text (the value after reading character t, like the activations)
# ----------------------------------------------------------------------------

def feature_values(text, name):
    """-> (N,) float64: the feature's value at each character.  'char:X' marks the character X."""
    if name.startswith("char:") and len(name) == 6:
        return np.array([ch == name[5] for ch in text], np.float64)
    if name not in FEATURES:
        raise UserError(f"unknown feature {name!r}; choose one of: {', '.join(FEATURES)}, or char:X for one character")
    if name in ("quotes", "brackets", "depth"):
        return _nesting(text, name)
    if name == "line-pos":
        out, col = [], 0
        for ch in text:
            out.append(col)
            col = 0 if ch == "\n" else col + 1
        return np.array(out, np.float64)
    if name == "after-newline":
        return np.array([t == 0 or text[t - 1] == "\n" for t in range(len(text))], np.float64)
    test = {"space": str.isspace, "alpha": str.isalpha, "upper": str.isupper, "digit": str.isdigit,
            "punct": lambda ch: ch in string.punctuation, "vowel": lambda ch: ch in "aeiouAEIOU"}[name]
    return np.array([test(ch) for ch in text], np.float64)


def _nesting(text, name):
    """Inside quotes / inside brackets / depth, as the state after reading each character."""
    out = np.empty(len(text), np.float64)
    depth, quoted = 0, False
    for t, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch in OPEN:
            depth += 1
        elif ch in CLOSE:
            depth = max(depth - 1, 0)
        out[t] = quoted if name == "quotes" else (depth > 0 if name == "brackets" else depth)
    return out


# ----------------------------------------------------------------------------
# Running the model
# ----------------------------------------------------------------------------

def collect_states(model, vocab, text, chunk=256):
    """Run text through the model (numpy backend) -> dict kind -> (L,N,H) float32 for cells.kinds(cell)."""
    if model.be is not nb:
        raise ValueError("collect_states reads the NumPy reference backend's caches; "
                         "load the model with backend='numpy'")
    ids = vocab.encode(text)
    N, L, H, cell = len(ids), model.cfg.layers, model.cfg.hidden_size, model.cfg.cell
    out = {k: np.empty((L, N, H), np.float32) for k in cells.kinds(cell)}
    state = model.zero_state(1)
    for s in range(0, N, chunk):
        tokens = ids[s:s + chunk].reshape(-1, 1)                      # (T,1)
        _, state, (caches, _) = model.forward(tokens, state)
        for l in range(L):
            for k, v in cells.layer_states(*cells.layer_cache(caches, l)).items():   # v (T,1,H)
                out[k][l, s:s + len(tokens)] = v[:, 0]
    return out


def correlations(acts, feature):
    """Pearson r of every unit with the feature: acts (L,N,H), feature (N,) -> (L,H); 0 for constant units."""
    f = feature - feature.mean()
    a = acts.astype(np.float64) - acts.mean(axis=1, keepdims=True)  # (L,N,H)
    num = np.einsum("lnh,n->lh", a, f)
    den = np.sqrt((a * a).sum(axis=1) * float(f @ f))               # (L,H)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def rank_units(states, text, feature, kind="h", layer=None, top=5):
    """-> list of (r, layer, unit), the units most correlated with the feature (by |r|) first."""
    f = feature_values(text, feature)
    if f.std() == 0:
        raise UserError(f"feature {feature!r} ({FEATURES.get(feature, 'that character')}) never changes on this "
                        f"text, so no unit can correlate with it; pass a text where it varies")
    r = correlations(states[kind], f)                                 # (L,H)
    layers = range(r.shape[0]) if layer is None else [layer]
    cand = [(float(r[l, u]), l, u) for l in layers for u in range(r.shape[1])]
    return sorted(cand, key=lambda x: -abs(x[0]))[:top]


def most_interpretable(states, text, kind="h", layer=None, top=8):
    """Without a feature: the best unit for every built-in feature that varies on the text.

    -> list of (r, layer, unit, feature), by |r|, each unit once."""
    found = []
    for name in FEATURES:
        f = feature_values(text, name)
        if f.std() > 0:
            r, l, u = rank_units(states, text, name, kind, layer, 1)[0]
            found.append((r, l, u, name))
    found.sort(key=lambda x: -abs(x[0]))
    seen, out = set(), []
    for r, l, u, name in found:
        if (l, u) not in seen:
            seen.add((l, u))
            out.append((r, l, u, name))
    return out[:top]


# ----------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
.txt { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 14px; line-height: 1.55;
       white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-all;
       border: 1px solid #ddd; padding: 0.8em; background: #fff; }
.txt span { padding: 1px 0; } .nl { color: #aaa; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 0.15em 0.6em; text-align: right; }
.legend span { display: inline-block; width: 3.2em; text-align: center; font-family: monospace; }
"""


def _color(v, signed):
    """Blue for positive, red for negative (signed) or white -> blue (0..1 gates)."""
    a = min(abs(float(v)), 1.0)
    if not signed or v >= 0:
        return f"rgb({int(255 - 190 * a)},{int(255 - 140 * a)},255)"
    return f"rgb(255,{int(255 - 170 * a)},{int(255 - 170 * a)})"


def coloured_text(text, values, kind):
    """Every character in a span whose background is the unit's activation (scaled to [-1,1])."""
    signed = kind in cells.SIGNED
    scale = float(np.abs(values).max()) if kind == "c" else 1.0      # c is unbounded: scale per unit
    scale = scale or 1.0
    out = []
    for ch, v in zip(text, values):
        shown = "\u21b5" if ch == "\n" else html.escape(ch)
        cls = ' class="nl"' if ch == "\n" else ""
        out.append(f'<span{cls} style="background:{_color(v / scale, signed)}" title="{kind}={v:.3f}">{shown}</span>'
                   + ("\n" if ch == "\n" else ""))
    return "".join(out)


def page_html(title, intro, sections, table=None):
    """sections: list of (heading, coloured-text html).  table: (header, rows) or None."""
    parts = ['<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>',
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>",
             '<p class="legend">colour: ' + "".join(
                 f'<span style="background:{_color(v, True)}">{v:+.1f}</span>' for v in (-1, -0.5, 0, 0.5, 1))
             + " (h, g and n in [-1, 1]; c scaled by its largest |c|; the sigmoid gates from 0 white to 1 blue)</p>"]
    if table:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in table[0])
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in table[1])
        parts.append(f"<table><tr>{head}</tr>{rows}</table>")
    for heading, body in sections:
        parts.append(f'<h2>{html.escape(heading)}</h2><div class="txt">{body}</div>')
    parts.append("</body></html>\n")
    return "".join(parts)


def inspect(model, vocab, text, out_html, layer=None, unit=None, kind="h", rank=None, top=5, source=""):
    """Build the page and write it.  -> dict(ranking=[(r, layer, unit[, feature])...], shown=[(layer, unit)...])."""
    L, H = model.cfg.layers, model.cfg.hidden_size
    cells.check_kind(model.cfg.cell, kind)
    if layer is not None and not 0 <= layer < L:
        raise UserError(f"--layer must be in 0..{L - 1} for this model (got {layer})")
    if unit is not None and not 0 <= unit < H:
        raise UserError(f"--unit must be in 0..{H - 1} for this model (got {unit})")
    if len(text) < 2:
        raise UserError("the text to inspect needs at least 2 characters")
    if top < 1:
        raise UserError(f"--top must be >= 1 (got {top})")
    states = collect_states(model, vocab, text)
    intro = f"{source}: {len(text):,} characters read as one stream from a zero state; state {kind}."
    table, ranking = None, []
    if unit is not None:
        l = L - 1 if layer is None else layer
        shown = [(l, unit, f"layer {l} unit {unit} ({kind})")]
        if rank:
            r = correlations(states[kind], feature_values(text, rank))[l, unit]
            shown[0] = (l, unit, shown[0][2] + f": r = {r:+.3f} with {FEATURES.get(rank, rank)}")
    elif rank:
        ranking = rank_units(states, text, rank, kind, layer, top)
        what = FEATURES.get(rank, f"the character {rank[5:]!r}")
        table = (["rank", "layer", "unit", f"r with {what}"],
                 [[k + 1, l, u, f"{r:+.3f}"] for k, (r, l, u) in enumerate(ranking)])
        shown = [(l, u, f"#{k + 1}: layer {l} unit {u} ({kind}), r = {r:+.3f} with {what}")
                 for k, (r, l, u) in enumerate(ranking)]
    else:
        ranking = most_interpretable(states, text, kind, layer, top)
        table = (["layer", "unit", "tracks best", "r"],
                 [[l, u, FEATURES[f], f"{r:+.3f}"] for r, l, u, f in ranking])
        shown = [(l, u, f"layer {l} unit {u} ({kind}): r = {r:+.3f} with {FEATURES[f]}") for r, l, u, f in ranking]
    sections = [(head, coloured_text(text, states[kind][l, :, u], kind)) for l, u, head in shown]
    page = page_html("lstm-engine inspect", intro, sections, table)
    try:
        atomic_write_bytes(out_html, page.encode("utf-8"))    # a crash leaves any earlier page whole
    except OSError as e:
        raise UserError(f"could not write {out_html!r}: {e.strerror or e}") from None
    return {"ranking": ranking, "shown": [(l, u) for l, u, _ in shown], "states": states}
