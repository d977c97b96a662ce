"""Printing explain's Blocks as text, markdown or HTML (with the LSTM cell drawn as SVG).

Each renderer returns a list of chunks, one per block (HTML adds a head and a foot), so the
CLI can wait for Enter between them.  Vectors are 1-D arrays of size H (or I).
"""
from __future__ import annotations

import html
import re
import textwrap

import numpy as np

REF_FILE = "lstm_engine/backends/numpy_backend.py"
MODULE_OF = {"model.": "lstm_engine/core/model.py", "Model.": "lstm_engine/core/model.py",
             "checkpoint.": "lstm_engine/storage/checkpoint.py", "numpy_cells.": "lstm_engine/backends/numpy_cells.py"}


def qualified(source):
    """'gate_activations (...)' -> ('numpy_backend.gate_activations (...)', its file)."""
    for prefix, path in MODULE_OF.items():
        if source.startswith(prefix):
            return ("model." if prefix == "Model." else "") + source, path
    return "numpy_backend." + source, REF_FILE


def num(x):
    """One number, 4 decimals in the usual range, scientific outside it."""
    x = float(x)
    if x == 0.0:
        return "0"
    return f"{x:.4f}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def vec_text(v, width=10):
    return "[" + " ".join(num(x).rjust(width) for x in np.asarray(v).reshape(-1)) + " ]"


def mat_lines(m, rows, cols, width=10):
    lab = max(len(r) for r in rows) + 2
    out = [" " * lab + "".join(c.rjust(width) for c in cols)]
    for r, line in zip(rows, m):
        out.append(r.ljust(lab) + "".join(num(x).rjust(width) for x in line))
    return out


def table_lines(header, rows):
    w = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def fmt(r):   # first column left-aligned, the numbers right-aligned
        return "  ".join(str(c).ljust(k) if j == 0 else str(c).rjust(k) for j, (c, k) in enumerate(zip(r, w)))
    return [fmt(header), "  ".join("-" * k for k in w)] + [fmt(r) for r in rows]


def item_lines(item, label_width=24):
    kind = item[0]
    if kind == "eq":
        return [item[1]]
    if kind == "text":
        return textwrap.wrap(item[1], 100)
    if kind == "vec":
        return [f"{item[1]:<{label_width}} = {vec_text(item[2])}"]
    if kind == "mat":
        return [f"{item[1]}:"] + ["  " + s for s in mat_lines(item[2], item[3], item[4])]
    if kind == "table":
        return table_lines(item[1], item[2])
    raise ValueError(kind)


# ----------------------------------------------------------------------------
# text and markdown
# ----------------------------------------------------------------------------

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")       # C0 (but tab, newline) and C1 controls
MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|&])")                   # what could open markup, a link, HTML or a cell


def plain(s):
    """Text for a terminal: control characters (an escape sequence in a file name) shown as \\xNN."""
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def md(s):
    """Markdown inline text: every character that could start markup, a link, HTML or end a table cell
    backslash-escaped, and line breaks shown as \\n (they would end a heading or a table row)."""
    s = MD_SPECIAL.sub(r"\\\1", plain(str(s)))
    return s.replace("\n", "\\\\n")                              # \r is a control: plain() showed it


def fence(lines):
    """A code fence longer than any run of backticks in `lines`, so no line can close it."""
    longest = max([len(r) for line in lines for r in re.findall("`+", line)] or [0])
    return "`" * max(3, longest + 1)


def render_text(blocks):
    chunks = []
    for b in blocks:
        src = ", ".join(qualified(s)[0] for s in b.sources)
        lines = ["", f"== {b.title} " + "=" * max(3, 96 - len(b.title)), f"   computed by: {src}", ""]
        lw = max([len(it[1]) for it in b.items if it[0] == "vec"] or [0])
        for it in b.items:
            lines += ["   " + s for s in item_lines(it, lw)]
        chunks.append(plain("\n".join(lines)))
    return chunks


def render_markdown(blocks):
    chunks = []
    for b in blocks:
        srcs = ", ".join(f"`{qualified(s)[0]}`" for s in b.sources)
        files = sorted({qualified(s)[1] for s in b.sources})
        out = [f"#### {md(b.title)}", "", f"*computed by* {srcs} (in {', '.join(files)})", ""]
        code = []
        lw = max([len(it[1]) for it in b.items if it[0] == "vec"] or [0])

        def flush():
            if code:
                lines = [plain(c) for c in code]
                out.extend([fence(lines) + "text", *lines, fence(lines), ""])
                code.clear()
        for it in b.items:
            if it[0] == "text":
                flush()
                out += [md(it[1]), ""]
            elif it[0] == "table":
                flush()
                out += ["| " + " | ".join(md(h) for h in it[1]) + " |", "|" + "---|" * len(it[1])]
                out += ["| " + " | ".join(md(c) for c in r) + " |" for r in it[2]] + [""]
            else:
                code += item_lines(it, lw)
        flush()
        chunks.append("\n".join(out))
    return chunks


# ----------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; line-height: 1.4; }
section { border-left: 4px solid #ccc; padding: 0.2em 1em; margin: 1.2em 0; }
section.backward { border-color: #d9822b; } section.loss, section.check { border-color: #2b7bd9; }
h3 { margin: 0.4em 0; font-size: 1.05em; } p.src { color: #555; font-size: 0.9em; margin: 0.2em 0; }
code, .eq, td { font-family: ui-monospace, Menlo, Consolas, monospace; }
.eq { background: #f6f6f6; padding: 0.15em 0.5em; margin: 0.25em 0; white-space: pre-wrap; }
table { border-collapse: collapse; margin: 0.4em 0; font-size: 0.88em; }
td, th { border: 1px solid #ddd; padding: 0.12em 0.45em; text-align: right; white-space: nowrap; }
table { display: block; overflow-x: auto; }
th { background: #f0f0f0; } td.lab { text-align: left; background: #fafafa; border: none; padding-right: 1em; }
svg { display: block; margin: 0.6em 0; max-width: 100%; height: auto; }
"""

GATE_COLOR = {"f": "#d1495b", "i": "#2e86de", "g": "#3a9d23", "o": "#8e44ad", "r": "#d1495b", "z": "#2e86de",
              "n": "#3a9d23"}


def cell_color(x, scale):
    """Blue for positive, red for negative, white at 0 (a CSS colour)."""
    a = min(abs(float(x)) / scale, 1.0) if scale > 0 else 0.0
    r, g, b = (255, int(255 - 150 * a), int(255 - 150 * a)) if x < 0 else (int(255 - 150 * a), int(255 - 110 * a), 255)
    return f"rgb({r},{g},{b})"


def vec_html(label, v):
    v = np.asarray(v).reshape(-1)
    scale = float(np.abs(v).max()) or 1.0
    cells = "".join(f'<td style="background:{cell_color(x, scale)}">{num(x)}</td>' for x in v)
    return f'<table class="vec"><tr><td class="lab">{html.escape(label)}</td>{cells}</tr></table>'


def table_html(header, rows, row_labels=None):
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def item_html(it):
    kind = it[0]
    if kind == "eq":
        return f'<div class="eq">{html.escape(it[1])}</div>'
    if kind == "text":
        return f"<p>{html.escape(it[1])}</p>"
    if kind == "vec":
        return vec_html(it[1], it[2])
    if kind == "mat":
        rows = [[r] + [num(x) for x in line] for r, line in zip(it[3], it[2])]
        return f"<p>{html.escape(it[1])}</p>" + table_html([""] + list(it[4]), rows)
    return table_html(it[1], it[2])


def render_html(blocks, title="lstm-engine explain"):
    head = ('<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>"
            "<p>Every number on this page was computed by the functions named above it, in "
            f"<code>{REF_FILE}</code> - the code that trains the models. Open it beside this page.</p>")
    chunks = [head]
    for b in blocks:
        srcs = ", ".join(f"<code>{html.escape(qualified(s)[0])}</code>" for s in b.sources)
        body = "".join(item_html(it) for it in b.items)
        if b.diagram:
            cap = ("step {0} at a glance: gradients (they flow right to left, against the arrows)" if b.phase ==
                   "backward" else "step {0} at a glance: the values on the cell").format(b.step)
            body += f"<p><b>{html.escape(cap)}</b></p>" + cell_svg(b.diagram)
        chunks.append(f'<section class="{b.phase}"><h3>{html.escape(b.title)}</h3>'
                      f'<p class="src">computed by {srcs}</p>{body}</section>')
    chunks.append("</body></html>\n")
    return chunks


# ----------------------------------------------------------------------------
# The cell as SVG: colah's picture with the numbers on the wires
# ----------------------------------------------------------------------------

def _svg_label(x, y, anchor, label, v, color="#222"):
    """A bold label and its vector, three numbers a line, starting at (x, y)."""
    v = np.asarray(v).reshape(-1)
    halo = 'stroke="#fff" stroke-width="4" paint-order="stroke"'      # readable where it crosses a wire
    out = [f'<text x="{x}" y="{y}" text-anchor="{anchor}" font-weight="bold" fill="{color}" {halo}>'
           f"{html.escape(label)}</text>"]
    for k in range(0, len(v), 3):
        y += 13
        out.append(f'<text x="{x}" y="{y}" text-anchor="{anchor}" fill="{color}" {halo}>'
                   + html.escape(" ".join(num(t) for t in v[k:k + 3])) + "</text>")
    return "".join(out)


def _line(points, arrow=True):
    p = " ".join(f"{x},{y}" for x, y in points)
    end = ' marker-end="url(#arr)"' if arrow else ""
    return f'<polyline points="{p}" fill="none" stroke="#444" stroke-width="2"{end}/>'


def _node(x, y, sym):
    return (f'<circle cx="{x}" cy="{y}" r="12" fill="#fff4d6" stroke="#444" stroke-width="1.5"/>'
            f'<text x="{x}" y="{y + 5}" text-anchor="middle" font-size="15">{sym}</text>')


def _box(x, y, fn, gate):
    c = GATE_COLOR[gate]
    return (f'<rect x="{x - 38}" y="{y - 18}" width="76" height="36" rx="6" fill="{c}" fill-opacity="0.18" '
            f'stroke="{c}" stroke-width="2"/><text x="{x}" y="{y + 5}" text-anchor="middle" font-size="14">'
            f'{fn} ({gate})</text>')


def cell_svg(d):
    """d: slot -> (label, vector) for the slots h_prev x c_prev f i g o c tanh_c h (a GRU's: see gru_svg)."""
    if "z" in d:
        return gru_svg(d)
    coupled = "1-f" in d.get("i", ("",))[0].replace(" ", "")       # the coupled cell's input gate is 1 - f
    fx, ix, gx, ox, gy = 230, 390, 530, 700, 290           # gate boxes: x centres, y centre
    mx, tx, right = (ix + gx) // 2, 800, 940               # i*g and + column, tanh/output column, right edge
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {right + 20} 450" width="{right + 20}" '
             'height="450" font-family="monospace" font-size="11">',
             '<defs><marker id="arr" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>',
             f'<rect x="140" y="30" width="{tx - 60}" height="355" rx="18" fill="#f4f7fb" stroke="#9ab"/>',
             _line([(60, 90), (fx - 12, 90)]), _line([(fx + 12, 90), (mx - 12, 90)]),
             _line([(mx + 12, 90), (right, 90)]),
             _line([(fx, gy - 18), (fx, 102)]),                                   # f -> x
             _line([(ix, gy - 18), (ix, 180), (mx - 12, 180)]), _line([(gx, gy - 18), (gx, 180), (mx + 12, 180)]),
             _line([(mx, 168), (mx, 102)]),                                       # i*g -> +
             _line([(tx, 90), (tx, 138)]), _line([(tx, 162), (tx, 218)]),         # c -> tanh -> x
             _line([(ox, gy - 18), (ox, 230), (tx - 12, 230)]), _line([(tx + 12, 230), (right, 230)]),
             _line([(60, 360), (200, 360)], False), _line([(200, 430), (200, 362)], False),
             _line([(200, 360), (ox, 360)], False)]
    parts += [_line([(x, 360), (x, gy + 20)]) for x in (fx, ix, gx, ox)]
    parts += [_node(fx, 90, "×"), _node(mx, 90, "+"), _node(mx, 180, "×"), _node(tx, 230, "×"),
              f'<ellipse cx="{tx}" cy="150" rx="26" ry="12" fill="#fff4d6" stroke="#444" stroke-width="1.5"/>'
              f'<text x="{tx}" y="155" text-anchor="middle" font-size="13">tanh</text>',
              _box(fx, gy, "σ", "f"), _box(ix, gy, "1-f" if coupled else "σ", "i"), _box(gx, gy, "tanh", "g"),
              _box(ox, gy, "σ", "o")]
    spots = {"c_prev": (64, 52, "start", "#222"), "c": (right, 52, "end", "#222"),
             "f": (fx - 8, 150, "end", GATE_COLOR["f"]), "i": (ix - 8, 236, "end", GATE_COLOR["i"]),
             "g": (gx + 8, 236, "start", GATE_COLOR["g"]), "o": (ox - 8, 196, "end", GATE_COLOR["o"]),
             "tanh_c": (tx - 32, 140, "end", "#222"), "h": (right, 250, "end", "#222"),
             "h_prev": (64, 380, "start", "#222"), "x": (212, 404, "start", "#222")}
    for slot, (x, y, anchor, color) in spots.items():
        if slot in d:
            parts.append(_svg_label(x, y, anchor, d[slot][0], d[slot][1], color))
    parts.append("</svg>")
    return "".join(parts)


def gru_svg(d):
    """The GRU: d: slot -> (label, vector) for h_prev x r z n hn (W_hn h + b_hn) z_h zn h."""
    zx, rx, mx, nx, gy, top, mid, right = 300, 520, 600, 700, 290, 90, 200, 940
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {right + 20} 450" width="{right + 20}" '
             'height="450" font-family="monospace" font-size="11">',
             '<defs><marker id="arr" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>',
             f'<rect x="140" y="30" width="{nx - 60}" height="355" rx="18" fill="#f4f7fb" stroke="#9ab"/>',
             _line([(60, top), (zx - 12, top)]), _line([(zx + 12, top), (nx - 12, top)]),      # h_{t-1}, z*h
             _line([(nx + 12, top), (right, top)]),                                           # h_t
             _line([(zx, gy - 18), (zx, top + 12)]), _line([(zx, mid), (388, mid)]),          # z up; to 1-z
             _line([(412, mid), (nx - 12, mid)]), _line([(nx, gy - 18), (nx, mid + 12)]),     # (1-z) and n meet
             _line([(nx, mid - 12), (nx, top + 12)]),                                         # (1-z)*n -> +
             _line([(rx + 38, gy), (mx - 12, gy)]), _line([(mx + 12, gy), (nx - 38, gy)]),    # r*(W_hn h + b_hn)
             _line([(150, top), (150, 360)], False), _line([(150, 360), (nx, 360)], False),
             _line([(200, 430), (200, 362)], False)]
    parts += [_line([(x, 360), (x, gy + 20)]) for x in (zx, rx, nx)] + [_line([(mx, 360), (mx, gy + 12)])]
    parts += [_node(zx, top, "×"), _node(nx, top, "+"), _node(nx, mid, "×"), _node(mx, gy, "×"),
              f'<circle cx="400" cy="{mid}" r="12" fill="#fff4d6" stroke="#444" stroke-width="1.5"/>'
              f'<text x="400" y="{mid + 4}" text-anchor="middle" font-size="11">1-</text>',
              _box(zx, gy, "σ", "z"), _box(rx, gy, "σ", "r"), _box(nx, gy, "tanh", "n")]
    spots = {"h_prev": (64, 52, "start", "#222"), "z_h": (zx + 14, 52, "start", "#222"),
             "h": (right, 52, "end", "#222"), "zn": (nx + 14, 150, "start", "#222"),
             "z": (zx - 8, 150, "end", GATE_COLOR["z"]), "r": (rx, 240, "middle", GATE_COLOR["r"]),
             "n": (nx + 46, 250, "start", GATE_COLOR["n"]), "hn": (mx - 8, 340, "end", "#222"),
             "x": (212, 404, "start", "#222")}
    for slot, (x, y, anchor, color) in spots.items():
        if slot in d:
            parts.append(_svg_label(x, y, anchor, d[slot][0], d[slot][1], color))
    parts.append("</svg>")
    return "".join(parts)


RENDERERS = {"text": render_text, "markdown": render_markdown, "html": render_html}


def render(blocks, fmt="text", title="lstm-engine explain"):
    """-> list of chunks (str) in the chosen format."""
    if fmt == "html":
        return render_html(blocks, title)
    return RENDERERS[fmt](blocks)
