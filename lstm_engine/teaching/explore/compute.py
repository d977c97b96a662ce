"""The numbers behind the explorer, every one from the NumPy reference backend in float64.

Nothing here is a second cell: Model.forward (embed_cell_forward / cell_forward per layer, the
output projection) gives the gates, c and h of every step from the reference forward's cache
(teaching/cells.py reads it, for every cell); log_softmax the next-character distribution;
cell_backward / linear_backward / softmax_xent the influence; the reference generate the samples;
inspect_cells the feature ranking.  The one repeated line is the forward's glue
z_t = x_t·W_x + b + h_{t-1}·W_h (as explain repeats it), checked against the gates the forward
returned (cells.preactivations).  Parameters are widened to float64, as explain widens them.

Position p reads character p and predicts character p+1 (explain's step p+1).
Dimension legend: N characters read, L layers, H hidden, G the gate blocks (4H or 3H), V vocabulary, E embedding,
T steps of the prefix the influence runs over, U units.
"""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ...backends import numpy_backend as nb
from ...core.data import Vocab
from ...core.generation import REPLACEMENT, check_sampling_options, generate_text
from ...core.model import Model, ModelConfig
from ...errors import UserError
from ...storage import checkpoint
from .. import cells
from .. import inspect_cells as ic

MAX_CHARS = 2000                # characters one request may read: each costs L·14H numbers of JSON per step
MAX_GENERATE = 2000             # characters one sample may have
TOP = 10                        # next-character bars shown
RUNS_KEPT = 4                   # texts whose forward pass is kept, so stepping does not rerun it
STREAM_CHUNK = 8                # characters per streamed piece of a sample

# The cell's equations, filled by the page with the numbers of one unit: {{path}} names a value of
# a layer in step()'s answer.  The page knows no equation of its own.
EQUATIONS = (
    "z_t = W·[h_{t-1}, x_t] + b      (pre-activations; input_projection + h_{t-1}·W_h)",
    "i_t = σ(z_i) = σ({{pre.i}}) = {{gates.i}}      (input gate)",
    "f_t = σ(z_f) = σ({{pre.f}}) = {{gates.f}}      (forget gate)",
    "g_t = tanh(z_g) = tanh({{pre.g}}) = {{gates.g}}      (cell candidate)",
    "o_t = σ(z_o) = σ({{pre.o}}) = {{gates.o}}      (output gate)",
    "c_t = f_t·c_{t-1} + i_t·g_t = {{gates.f}}·{{c_prev}} + {{gates.i}}·{{gates.g}}"
    " = {{terms.f_c_prev}} + {{terms.i_g}} = {{c}}",
    "h_t = o_t·tanh(c_t) = {{gates.o}}·tanh({{c}}) = {{gates.o}}·{{terms.tanh_c}} = {{h}}",
)
CELL_EQUATIONS = {
    "lstm": EQUATIONS,
    "peephole": (
        "z_t = W·[h_{t-1}, x_t] + b      (before the peepholes; input_projection + h_{t-1}·W_h)",
        "i_t = σ(z_i + w_ci·c_{t-1}) = σ({{pre.i}}) = {{gates.i}}    (input gate; w_ci·c_{t-1} = "
        "{{terms.wci_c_prev}})",
        "f_t = σ(z_f + w_cf·c_{t-1}) = σ({{pre.f}}) = {{gates.f}}    (forget gate; w_cf·c_{t-1} = "
        "{{terms.wcf_c_prev}})",
        EQUATIONS[3], EQUATIONS[5],
        "o_t = σ(z_o + w_co·c_t) = σ({{pre.o}}) = {{gates.o}}      (output gate; w_co·c_t = {{terms.wco_c}})",
        EQUATIONS[6]),
    "coupled": (
        "z_t = W·[h_{t-1}, x_t] + b      (pre-activations of f, g, o; input_projection + h_{t-1}·W_h)",
        "f_t = σ(z_f) = σ({{pre.f}}) = {{gates.f}}      (forget gate; the input gate is 1 - f_t)",
        EQUATIONS[3], EQUATIONS[4],
        "c_t = f_t·c_{t-1} + (1 - f_t)·g_t = {{gates.f}}·{{c_prev}} + (1 - {{gates.f}})·{{gates.g}}"
        " = {{terms.f_c_prev}} + {{terms.one_minus_f_g}} = {{c}}",
        EQUATIONS[6]),
    "gru": (
        "r_t = σ(W_ir·x_t + b_ir + W_hr·h_{t-1} + b_hr) = σ({{pre.r}}) = {{gates.r}}      (reset gate)",
        "z_t = σ(W_iz·x_t + b_iz + W_hz·h_{t-1} + b_hz) = σ({{pre.z}}) = {{gates.z}}      (update gate)",
        "n_t = tanh(W_in·x_t + b_in + r_t·(W_hn·h_{t-1} + b_hn)) = tanh({{terms.x_n}} + {{gates.r}}·{{terms.h_n}})"
        " = tanh({{pre.n}}) = {{gates.n}}      (candidate)",
        "h_t = (1 - z_t)·n_t + z_t·h_{t-1} = (1 - {{gates.z}})·{{gates.n}} + {{gates.z}}·{{h_prev}}"
        " = {{terms.one_minus_z_n}} + {{terms.z_h_prev}} = {{h}}"),
}


@dataclass
class Run:
    """One text read from a zero state."""
    text: str
    ids: np.ndarray             # (N,) token ids
    states: dict                # kind -> (L,N,H): h, c and the gates (cells.kinds) after reading each character
    pre: np.ndarray             # (L,N,G) gate pre-activations z
    extra: dict                 # gru: x_n, h_n -> (L,N,H), the two terms of n's pre-activation; {} otherwise
    logp: np.ndarray            # (N,V) log p(next character)
    loss: np.ndarray            # (N-1,) -log p(the real next character)


def _index(value, n, what, hint):
    if not 0 <= value < n:
        raise UserError(f"{what} must be in 0..{n - 1} (got {value}); {hint}")
    return value


class Explorer:
    """A checkpoint on the reference backend (float64) and the last few texts it read."""

    def __init__(self, path):
        tensors, meta = checkpoint.load(path)              # validated; nothing executes
        stored = ModelConfig(**meta["model"])
        self.cfg = dataclasses.replace(stored, dropout=0.0, dtype="float64")
        self.cell = stored.cell
        self.gates, self.kinds = cells.GATES[self.cell], cells.kinds(self.cell)
        params = {n: tensors["param." + n].astype(np.float64) for n in stored.param_shapes()}
        self.model = Model(self.cfg, nb, params)
        self.vocab = Vocab(meta["vocab"])
        self.path, self.stored, self.trained_steps = str(path), stored, meta.get("trainer", {}).get("step")
        self._runs = OrderedDict()                          # text -> Run
        self._lock = threading.Lock()

    # -- what the page asks first ------------------------------------------------------------------
    def info(self):
        L, H = self.cfg.layers, self.cfg.hidden_size
        return {"checkpoint": self.path, "trained_steps": self.trained_steps, "model": self.stored.to_dict(),
                "layers": L, "hidden": H, "vocab": self.vocab.symbols, "cell": self.cell, "gates": list(self.gates),
                "kinds": list(self.kinds), "equations": list(CELL_EQUATIONS[self.cell]), "features": ic.FEATURES,
                "limits": {"max_chars": MAX_CHARS, "max_generate": MAX_GENERATE}}

    # -- reading a text ---------------------------------------------------------------------------
    def read(self, text):
        """-> the Run of `text` (kept for the next few requests)."""
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_CHARS:
            n = len(text) if isinstance(text, str) else 0
            raise UserError(f"the text has {n:,} characters; the explorer reads 1 to {MAX_CHARS:,} at a time: "
                            f"{'shorten it' if n else 'type some text'}")
        with self._lock:
            run = self._runs.get(text)
            if run is not None:
                self._runs.move_to_end(text)
                return run
        run = self._forward(text)
        with self._lock:
            self._runs[text] = run
            while len(self._runs) > RUNS_KEPT:
                self._runs.popitem(last=False)
        return run

    def _forward(self, text):
        ids = self.vocab.encode(text, strict=True)          # one-line error for characters it never saw
        L, H, N = self.cfg.layers, self.cfg.hidden_size, len(ids)
        tokens = ids.reshape(N, 1).astype(np.int64)         # (N,1)
        logits, _, (caches, _) = self.model.forward(tokens, self.model.zero_state(1))   # (N,V)
        states = {k: np.empty((L, N, H)) for k in self.kinds}
        pre = np.empty((L, N, len(self.gates) * H))
        extra = {}
        for l in range(L):
            cell, lc = cells.layer_cache(caches, l)          # the reference forward's cache of layer l
            for k, v in cells.layer_states(cell, lc).items():
                states[k][l] = v[:, 0]                        # (N,H)
            z, more = cells.preactivations(cell, lc, self.model.layer_params(l))
            pre[l] = z[:, 0]                                  # (N,G)
            for k, v in more.items():
                extra.setdefault(k, np.empty((L, N, H)))[l] = v[:, 0]
        logp = nb.log_softmax(logits)                       # (N,V)
        loss = -logp[np.arange(N - 1), ids[1:]]             # (N-1,)
        return Run(text, ids, states, pre, extra, logp, loss)

    def summary(self, text):
        """The text as the model reads it: its characters and the loss of each prediction."""
        run = self.read(text)
        mean = float(run.loss.mean()) if len(run.loss) else None
        return {"chars": list(text), "n": len(text), "loss": run.loss.tolist(), "mean_loss": mean,
                "mean_bits": None if mean is None else mean / np.log(2)}

    def symbol(self, i):
        return REPLACEMENT if i == self.vocab.unk else self.vocab.symbols[int(i)]

    def step(self, text, t):
        """Everything at position t: per layer the gates, pre-activations, c, h and the equation terms;
        the next-character distribution (top bars) and the loss of the real next character."""
        run = self.read(text)
        N = len(run.ids)
        _index(t, N, "t", f"the text has {N} characters")
        layers = [self._layer_step(run, l, t) for l in range(self.cfg.layers)]
        p = np.exp(run.logp[t])                              # (V,)
        top = np.argsort(-p, kind="stable")[:TOP]
        nxt = int(run.ids[t + 1]) if t + 1 < N else None
        return {"t": t, "char": text[t], "next": None if nxt is None else text[t + 1],
                "loss": None if nxt is None else float(run.loss[t]),
                "p_next": None if nxt is None else float(p[nxt]),
                "top": [{"char": self.symbol(i), "p": float(p[i])} for i in top], "layers": layers}

    def _layer_step(self, run, l, t):
        """Layer l at position t: gates, pre-activations, states before and after, and the terms the
        cell's equations (CELL_EQUATIONS) add up."""
        s, H = run.states, self.cfg.hidden_size
        g = {k: s[k][l, t] for k in self.gates}                  # (H,) each
        h_prev = s["h"][l, t - 1] if t else np.zeros(H)          # (H,) the zero state before the text
        out = {"gates": g, "pre": {k: run.pre[l, t, j * H:(j + 1) * H] for j, k in enumerate(self.gates)},
               "h": s["h"][l, t], "h_prev": h_prev}
        if self.cell == "gru":
            x_n, h_n = run.extra["x_n"][l, t], run.extra["h_n"][l, t]
            out["terms"] = {"x_n": x_n, "h_n": h_n, "one_minus_z_n": (1.0 - g["z"]) * g["n"],
                            "z_h_prev": g["z"] * h_prev}
        else:
            c, c_prev = s["c"][l, t], (s["c"][l, t - 1] if t else np.zeros(H))
            out.update(c=c, c_prev=c_prev)
            terms = {"f_c_prev": g["f"] * c_prev, "tanh_c": np.tanh(c)}
            if self.cell == "coupled":
                terms["one_minus_f_g"] = (1.0 - g["f"]) * g["g"]
            else:
                terms["i_g"] = g["i"] * g["g"]
            if self.cell == "peephole":
                wc = self.model.params[f"wc{l}"]                 # (3,H) w_ci, w_cf, w_co
                terms.update(wci_c_prev=wc[0] * c_prev, wcf_c_prev=wc[1] * c_prev, wco_c=wc[2] * c)
            out["terms"] = terms
        return {k: ({n: u.tolist() for n, u in v.items()} if isinstance(v, dict) else v.tolist())
                for k, v in out.items()}

    def activations(self, text, layer, kind="h", units=None):
        """One layer's `kind` over the whole text -> values (N,U) for the units asked (default all)."""
        run = self.read(text)
        L, H = self.cfg.layers, self.cfg.hidden_size
        _index(layer, L, "layer", f"the model has {L} layer(s)")
        cells.check_kind(self.cell, kind, "kind")
        units = list(range(H)) if units is None else units
        for u in units:
            _index(u, H, "unit", f"the model has {H} units per layer")
        vals = run.states[kind][layer][:, units]             # (N,U)
        return {"layer": layer, "kind": kind, "units": units, "values": vals.tolist()}

    def rank(self, text, kind="h", feature=None, top=10):
        """Units ranked by |r| with a feature inspect --rank knows, or the best unit of every feature."""
        run = self.read(text)
        cells.check_kind(self.cell, kind, "kind")
        if feature:
            rows = ic.rank_units(run.states, text, feature, kind, None, top)
            return {"kind": kind, "feature": feature,
                    "units": [{"r": r, "layer": l, "unit": u, "feature": feature} for r, l, u in rows]}
        rows = ic.most_interpretable(run.states, text, kind, None, top)
        return {"kind": kind, "feature": None,
                "units": [{"r": r, "layer": l, "unit": u, "feature": f} for r, l, u, f in rows]}

    def search(self, text, start, end, threshold, layer, kind="h", top=20):
        """LSTMVis's pattern search: the units above `threshold` at every position of [start, end), then the
        other spans of the text where that whole set is above it."""
        run = self.read(text)
        N, L = len(run.ids), self.cfg.layers
        _index(layer, L, "layer", f"the model has {L} layer(s)")
        cells.check_kind(self.cell, kind, "kind")
        if not 0 <= start < end <= N:
            raise UserError(f"the span must satisfy 0 <= start < end <= {N} (got {start}..{end}); "
                            f"select at least one character of the text")
        on = run.states[kind][layer] > threshold             # (N,H)
        units = np.flatnonzero(on[start:end].all(axis=0))    # (U,)
        if units.size == 0:
            return {"units": [], "matches": [], "count": 0,
                    "note": f"no unit of layer {layer} stays above {threshold} through this span; "
                            f"lower the threshold or select a shorter span"}
        hit = on[:, units].all(axis=1)                       # (N,) the whole set is on
        edges = np.flatnonzero(np.diff(np.concatenate([[0], hit.astype(np.int8), [0]])))
        spans = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if not (a <= start and end <= b)]
        spans.sort(key=lambda s: (-(s[1] - s[0]), s[0]))
        return {"units": units.tolist(), "count": len(spans),
                "mean": run.states[kind][layer][start:end, units].mean(axis=0).tolist(),
                "matches": [{"start": a, "end": b, "text": text[a:b]} for a, b in spans[:top]]}

    def influence(self, text, t):
        """How much each earlier character moves the loss at t: |dL_t/dx_k| for k = 0..t, x_k the embedding
        the model read at k, by BPTT through the reference backward (as Model.forward_backward runs it)."""
        run = self.read(text)
        N, L, H = len(run.ids), self.cfg.layers, self.cfg.hidden_size
        if not 0 <= t < N - 1:
            raise UserError(f"the influence needs a character to predict: t must be in 0..{N - 2} (got {t}); "
                            f"move the cursor before the last character")
        P = self.model.params
        tokens = run.ids[:t + 1].reshape(t + 1, 1).astype(np.int64)                    # (T,1)
        logits, _, (caches, x2) = self.model.forward(tokens, self.model.zero_state(1))   # (T,V), x2 (T,H)
        loss, dlogits = nb.softmax_xent(logits[t:t + 1], run.ids[t + 1:t + 2])           # L_t, (1,V)
        dh = np.zeros((t + 1, 1, H))                                                     # (T,1,H)
        dh[t] = nb.linear_backward(x2[t:t + 1], dlogits, P["Wy"])[0]                    # only L_t
        zeros = np.zeros((1, H))
        for l in reversed(range(1, L)):
            dh = nb.cell_backward(dh, zeros, zeros, caches[l])[0]                        # (T,1,H)
        dx = nb.cell_backward(dh, zeros, zeros, cells.layer_cache(caches, 0))[0]       # (T,1,E)
        norms = np.linalg.norm(dx[:, 0], axis=1)                                         # (T,)
        return {"t": t, "target": text[t + 1], "loss": loss, "norms": norms.tolist()}

    # -- sampling ----------------------------------------------------------------------------------
    def sampler(self, prime="", length=200, temperature=1.0, top_k=None, top_p=1.0, seed=None, greedy=False):
        """Check the options and the prime now (before anything streams) -> run(on_text) -> the sample."""
        if top_k is not None and top_k < 1:
            raise UserError(f"top_k must be >= 1 (got {top_k}); leave it out to keep every symbol")
        check_sampling_options(temperature, top_k, top_p, length)
        if not 1 <= length <= MAX_GENERATE:
            raise UserError(f"length must be in 1..{MAX_GENERATE} (got {length})")
        if len(prime) > MAX_CHARS:
            raise UserError(f"the prime has {len(prime):,} characters; at most {MAX_CHARS:,}: shorten it")
        self.vocab.encode(prime, strict=True)

        def run(on_text=None):
            return generate_text(self.model, self.vocab, prime, length, temperature, top_k or 0, top_p, greedy,
                                 seed, on_text, chunk=STREAM_CHUNK)
        return run
