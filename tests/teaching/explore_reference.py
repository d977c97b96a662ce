"""Reference numbers for the explorer's tests, from explain and from the backend's functions directly.

Dimension legend: N characters, T steps, E embedding, H hidden, L layers.
"""
import contextlib

import numpy as np

from lstm_engine.backends import numpy_backend as nb
from lstm_engine.core.model import layer_params
from lstm_engine.storage import checkpoint
from lstm_engine.teaching import explain as ex
from lstm_engine.teaching import explain_cells

# 'a' then quotes, brackets, a newline: every character is in the training corpus's vocabulary
TEXT = 'ab "cd" (a (b) c)\nd "ab" c'
KINDS = ("i", "f", "g", "o", "c", "h")


def explained(path, text, layer):
    """explain's Explainer over text + one more character, so that every position of `text` is a step.

    -> dict kind -> (N,H) and 'z' -> (N,4H), position p = explain's step p+1."""
    e = ex.Explainer(ex.checkpoint_setup(path, text + "a", layer))
    e.run()
    N, H = len(text), e.H
    out = {"z": np.array([e.values["z", p + 1] for p in range(N)])}
    a = np.array([e.values["a", p + 1] for p in range(N)])                          # (N,4H)
    for k, g in enumerate("ifgo"):
        out[g] = a[:, k * H:(k + 1) * H]
    out["c"] = np.array([e.values["c", p + 1] for p in range(N)])
    out["h"] = np.array([e.values["h", p + 1] for p in range(N)])
    out["logp"] = nb.log_softmax(e.logits)[:N]                                     # (N,V)
    return out


def explained_cell(path, text, layer):
    """explained() for a peephole, coupled or gru checkpoint: kind -> (N,H) for its gates, h (and c), 'pre' (N,G)."""
    e = explain_cells.CellExplainer(ex.checkpoint_setup(path, text + "a", layer))
    e.run()
    N, H = len(text), e.H
    a = np.array([e.values["a", p + 1] for p in range(N)])                          # (N,G)
    out = {g: a[:, k * H:(k + 1) * H] for k, g in enumerate(e.gates)}
    out["pre"] = np.array([e.values["pre", p + 1] for p in range(N)])
    for kind in ("h", "c", "hn"):
        if (kind, 1) in e.values:
            out[kind] = np.array([e.values[kind, p + 1] for p in range(N)])
    out["logp"] = nb.log_softmax(e.logits)[:N]                                     # (N,V)
    return out


def params64(path):
    tensors, meta = checkpoint.load(path)
    return {n[6:]: t.astype(np.float64) for n, t in tensors.items() if n.startswith("param.")}, meta


def loss_at(P, x, t, target, cell="lstm"):
    """-log p_t(target) with x (T,1,E) the embeddings read, through the cell's reference forward layer by layer."""
    L = sum(1 for n in P if n.startswith("W") and n[1:].isdigit())
    H = P["Wy"].shape[0]
    hs = x
    for l in range(L):
        zeros = np.zeros((1, H))
        hs, _, _, _ = nb.cell_forward(cell, hs, layer_params(P, cell, l), zeros, zeros)
    logits = hs[t] @ P["Wy"] + P["by"]                                             # (1,V)
    return -float(nb.log_softmax(logits)[0, target])


def influence_fd(path, text, t, eps=1e-6):
    """|dL_t/dx_k| for k = 0..t by central differences on each embedding read -> (t+1,)."""
    P, meta = params64(path)
    cell = meta["model"].get("cell", "lstm")
    index = {s: i for i, s in enumerate(meta["vocab"])}
    ids = [index[ch] for ch in text]
    x = P["Emb"][ids[:t + 1]].reshape(t + 1, 1, -1).copy()                         # (T,1,E)
    grad = np.zeros_like(x)
    for k in range(t + 1):
        for e in range(x.shape[2]):
            old = x[k, 0, e]
            x[k, 0, e] = old + eps
            lp = loss_at(P, x, t, ids[t + 1], cell)
            x[k, 0, e] = old - eps
            lm = loss_at(P, x, t, ids[t + 1], cell)
            x[k, 0, e] = old
            grad[k, 0, e] = (lp - lm) / (2 * eps)
    return np.linalg.norm(grad[:, 0], axis=1)


def pattern_search(acts, start, end, threshold):
    """LSTMVis's search written out by brute force: acts (N,H) -> (units on through the span, maximal runs
    elsewhere where all of them are on)."""
    N, H = acts.shape
    units = [u for u in range(H) if all(acts[p, u] > threshold for p in range(start, end))]
    if not units:
        return [], []
    on = [all(acts[p, u] > threshold for u in units) for p in range(N)]
    runs, p = [], 0
    while p < N:
        if on[p]:
            q = p
            while q < N and on[q]:
                q += 1
            if not (p <= start and end <= q):
                runs.append((p, q))
            p = q
        else:
            p += 1
    return units, runs


@contextlib.contextmanager
def serving(path):
    """The explorer's server for checkpoint `path` on a free 127.0.0.1 port, in a thread."""
    from lstm_engine.teaching.explore import server
    srv = server.start(path, "127.0.0.1", 0)
    server.serve_in_thread(srv)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
