"""`lstm-engine explain`: one LSTM layer stepped through with real numbers, forward then BPTT.

Nothing here is a second LSTM.  Every number comes from the reference functions that train
models (backends/numpy_backend.py, reached through model.Model with the numpy backend):

    Model.forward            -> embed_lstm_forward / lstm_forward per layer, output projection
    input_projection         -> x_t . W_x + b for every step          (forward, per layer)
    gate_activations         -> i, f, g, o from the pre-activations z_t
    cell_update              -> c_t and h_t
    softmax_xent             -> the loss and dL/dlogits
    cell_update_backward     -> dL/do, dL/dc, dL/di, dL/df, dL/dg, dL/dc_{t-1}   (called by lstm_step_backward)
    gate_activations_backward-> dL/dz                                         (called by lstm_step_backward)
    lstm_backward            -> dW, db, dx, dh0, dc0 (the per-step terms below are checked against it)
    Model.forward_backward / Model.loss -> the gradient check

The only lines repeated here are the two glue lines of lstm_forward / lstm_backward's loops
(z_t = xproj_t + h_{t-1} . W_h and dL/dh_{t-1} = dz_t . W_h^T), and every value they give is
compared with what lstm_forward and lstm_backward themselves return.

Dimension legend: T time steps, B batch (1 here), I input size, H hidden, G = 4H, V vocab.
The result is a list of Blocks that explain_render.py prints as text, markdown or HTML.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from ..storage import checkpoint
from ..backends import numpy_backend as nb
from ..core.data import Vocab
from ..errors import UserError
from ..core.model import Model, ModelConfig, init_params
from .cells import layer_cache

GATES = ("i", "f", "g", "o")
MAX_TEXT = 33                   # at most 32 steps: the printout grows with every step
TINY, REL_OK, ABS_OK = 1e-7, 1e-5, 1e-9   # gradient check: "zero" gradient, pass thresholds
# multiply-adds the gradient check may cost: the default --max-check on the largest model the
# time-budget recipe trains (E96 H768 L2) over a 32-character text stays within it
MAX_CHECK_WORK = 3e11
STEP_OVERHEAD = 20_000          # one forward step's fixed cost (NumPy calls) in multiply-add equivalents


@dataclass
class Block:
    """One printable unit: a title, the functions that computed it, and its items.

    items: ("eq", str) | ("text", str) | ("vec", label, (n,) array) |
           ("mat", label, (r,c) array, row_labels, col_labels) | ("table", header, rows)
    """
    title: str
    sources: list
    items: list = field(default_factory=list)
    phase: str = "forward"      # setup | forward | loss | backward | check
    step: int | None = None     # 1-based time step, when the block belongs to one
    diagram: dict | None = None  # slot -> (label, vector) for the HTML cell drawing


@dataclass
class Setup:
    """What explain runs: float64 parameters, their config, the vocabulary, the text and the layer."""
    cfg: ModelConfig
    params: dict
    vocab: Vocab
    text: str
    layer: int = 0
    origin: str = ""


def tiny_setup(text="hello", input_size=2, hidden_size=3, seed=0, cell="lstm"):
    """A fresh one-layer model of `cell` (embedding size = input size) whose vocabulary is the text's characters."""
    if input_size < 1 or hidden_size < 1:
        raise UserError("--input-size and --hidden-size must be >= 1")
    _check_text(text)
    vocab = Vocab.build(text)
    cfg = ModelConfig(len(vocab), input_size, hidden_size, layers=1, dtype="float64", cell=cell)
    params = init_params(cfg, seed)
    return Setup(cfg, params, vocab, text, 0, f"a fresh model (seed {seed}), PyTorch-style initialisation")


def checkpoint_setup(path, text, layer=0):
    """A trained checkpoint, its parameters widened to float64 so the gradient check is exact."""
    if text is None:
        raise UserError("explain --checkpoint needs --text, e.g. --text 'To be'")
    _check_text(text)
    tensors, meta = checkpoint.load(path)
    cfg = ModelConfig(**meta["model"])
    if not 0 <= layer < cfg.layers:
        raise UserError(f"--layer must be in 0..{cfg.layers - 1} for this checkpoint (got {layer})")
    vocab = Vocab(meta["vocab"])
    vocab.encode(text, strict=True)                    # one-line error for characters it never saw
    params = {n: tensors["param." + n].astype(np.float64) for n in cfg.param_shapes()}
    cfg = dataclasses.replace(cfg, dropout=0.0, dtype="float64")
    step = meta.get("trainer", {}).get("step", "?")
    return Setup(cfg, params, vocab, text, layer, f"checkpoint {path} (step {step}), widened to float64")


def _check_text(text):
    if not 2 <= len(text) <= MAX_TEXT:
        raise UserError(f"--text must have 2 to {MAX_TEXT} characters (got {len(text)}): each character "
                        f"but the last is one time step and the printout grows with every step")


def show(ch):
    """A character as the reader should see it: 'a', '\\n', ' '."""
    return repr(ch)


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------

class Explainer:
    """Runs the model once with the reference backend and turns the numbers into Blocks."""

    def __init__(self, setup: Setup, units=None):
        self.s = setup
        self.cfg = setup.cfg
        self.H = setup.cfg.hidden_size
        self.units = min(units or (self.H if self.H <= 8 else 6), self.H)
        self.model = Model(setup.cfg, nb, setup.params)
        ids = setup.vocab.encode(setup.text, strict=True)
        self.T = len(ids) - 1
        self.tokens = ids[:-1].reshape(self.T, 1).astype(np.int64)    # (T,1)
        self.targets = ids[1:].reshape(self.T, 1).astype(np.int64)    # (T,1)
        self.chars = list(setup.text)
        state = self.model.zero_state(1)
        self.logits, _, (self.caches, self.x2) = self.model.forward(self.tokens, state)   # (T,V)
        self.loss, self.dlogits = nb.softmax_xent(self.logits, self.targets.reshape(-1))   # float, (T,V)
        self.cell, self.lcache = layer_cache(self.caches, setup.layer)
        self.read_cache(self.lcache)
        self.I = self.x.shape[2]
        self.blocks = []
        self.values = {}        # (name, 1-based step) -> full vector, and "dW", "db": what the blocks show

    def read_cache(self, lc):
        """lstm_forward's cache: x (T,1,I), W (H+I,G), h0, c0 (1,H), hs, cs (T,1,H), acts (T,1,G)."""
        self.x, self.W, self.h0, self.c0, self.hs, self.cs, self.acts = lc
        self.b = self.model.params[f"b{self.s.layer}"]               # (G,)

    def cut(self, v):
        """The first `units` entries of a hidden-sized vector (all of an input-sized one)."""
        return v[: self.units] if v.shape[-1] == self.H else v

    def gate(self, a, k):
        """Slice gate k (0 i, 1 f, 2 g, 3 o) out of a (1,G) or (G,) array -> (H,)."""
        return a.reshape(-1)[k * self.H:(k + 1) * self.H]

    def vec(self, label, v):
        return ("vec", label, self.cut(np.asarray(v).reshape(-1)))

    # -- the page ------------------------------------------------------------
    def run(self, backward=False, max_check=64, seed=0):
        self.setup_block()
        self.forward_blocks()
        self.loss_block()
        if backward:
            self.backward_blocks()
            self.check_blocks(max_check, seed)
        return self.blocks

    def setup_block(self):
        s, H, I = self.s, self.H, self.I
        layer_in = "x_t = Emb[char] (embed_lstm_forward gathers it)" if s.layer == 0 else \
            f"x_t = h_t of layer {s.layer - 1} (lstm_forward of the layer below)"
        items = [("text", f"model: {s.origin}"),
                 ("text", f"layer {s.layer} of {self.cfg.layers}: input size I = {I}, hidden size H = {H}, "
                          f"vocabulary V = {self.cfg.vocab_size}; {layer_in}"),
                 ("text", f"text {s.text!r}: {self.T} steps; step t reads character t and predicts character t+1"),
                 ("eq", "W (H+I, 4H) multiplies [h_{t-1}, x_t]: rows 0..H-1 are W_h, rows H.. are W_x;"),
                 ("eq", "column blocks are the gates in PyTorch's order i, f, g, o  (so W_f = W[:, H:2H])")]
        if self.units < H:
            items.append(("text", f"vectors of size H show units 0..{self.units - 1} of {H} (--units)"))
        if (H + I) * 4 * H <= 96:
            rows = [f"h{j}" for j in range(H)] + [f"x{j}" for j in range(I)]
            cols = [f"{g}{j}" for g in GATES for j in range(H)]
            items.append(("mat", "W", self.W, rows, cols))
            items.append(("mat", "b", self.b.reshape(1, -1), ["b"], cols))
            items.append(("text", "the forget-gate slice b_f starts at 1: the cell keeps its memory until it "
                                  "learns to forget (init_params in model.py)"))
        self.blocks.append(Block("the model", ["model.init_params" if "fresh" in s.origin else "checkpoint.load",
                                               "model.Model.forward"], items, phase="setup"))

    def forward_blocks(self):
        H = self.H
        Wh, Wx = self.W[:H], self.W[H:]                               # (H,G), (I,G)
        xproj = nb.input_projection(self.x, Wx, self.b)               # (T,1,G)
        h, c = self.h0, self.c0                                       # (1,H) each
        for t in range(self.T):
            z = xproj[t] + h @ Wh                                     # (1,G) as in lstm_forward's loop
            a = nb.gate_activations(z)                                # (1,G)
            h_new, c_new = nb.cell_update(a, c)                       # (1,H) each
            _same(a, self.acts[t], "gate_activations", "lstm_forward's gates")
            _same(h_new, self.hs[t], "cell_update", "lstm_forward's h_t")
            for name, v in (("z", z), ("a", a), ("c", c_new), ("h", h_new)):
                self.values[name, t + 1] = v.reshape(-1)
            self.step_blocks(t, h, c, z, a, h_new, c_new)
            h, c = h_new, c_new

    def step_blocks(self, t, h, c, z, a, h_new, c_new):
        n, step = t + 1, t + 1
        what = f"step {n}/{self.T}: reads {show(self.chars[t])}, predicts {show(self.chars[t + 1])}"
        xin = "Emb[" + show(self.chars[t]) + "]" if self.s.layer == 0 else f"h_t of layer {self.s.layer - 1}"
        self.blocks.append(Block(f"{what} - the input [h_{{t-1}}, x_t]", ["lstm_forward"], [
            ("eq", "[h_{t-1}, x_t]: the previous output stacked on the new input (rows of W: W_h then W_x)"),
            self.vec("h_{t-1}", h), self.vec(f"x_t = {xin}", self.x[t])], step=step))
        items = []
        names = {"i": "input gate", "f": "forget gate", "g": "cell candidate", "o": "output gate"}
        for k, gname in enumerate(GATES):
            fn = "tanh" if gname == "g" else "σ"
            items += [("eq", f"{gname}_t = {fn}(W_{gname}·[h_{{t-1}}, x_t] + b_{gname})    ({names[gname]})"),
                      self.vec(f"  pre-activation z_{gname}", self.gate(z, k)),
                      self.vec(f"  activation     {gname}_t", self.gate(a, k))]
        self.blocks.append(Block(f"step {n} - the four gates", [
            "input_projection (x_t·W_x + b, all steps in one product)",
            "lstm_forward (+ h_{t-1}·W_h)", "gate_activations (σ on i, f, o; tanh on g)"], items, step=step))
        i, f, g, o = (self.gate(a, k) for k in range(4))
        self.blocks.append(Block(f"step {n} - the cell update", ["cell_update"], [
            ("eq", "c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t     (forget some of the old memory, write some new)"),
            self.vec("c_{t-1}", c), self.vec("f_t ⊙ c_{t-1}", f * c.reshape(-1)),
            self.vec("i_t ⊙ g_t", i * g), self.vec("c_t", c_new)], step=step))
        tc = np.tanh(c_new.reshape(-1))
        self.blocks.append(Block(f"step {n} - the output", ["cell_update"], [
            ("eq", "h_t = o_t ⊙ tanh(c_t)      (the output gate decides what of the memory to show)"),
            self.vec("tanh(c_t)", tc), self.vec("o_t", o), self.vec("h_t", h_new)], step=step,
            diagram={"h_prev": ("h_{t-1}", self.cut(h.reshape(-1))), "x": ("x_t", self.x[t].reshape(-1)),
                     "c_prev": ("c_{t-1}", self.cut(c.reshape(-1))), "f": ("f_t", self.cut(f)),
                     "i": ("i_t", self.cut(i)), "g": ("g_t", self.cut(g)), "o": ("o_t", self.cut(o)),
                     "c": ("c_t", self.cut(c_new.reshape(-1))), "tanh_c": ("tanh(c_t)", self.cut(tc)),
                     "h": ("h_t", self.cut(h_new.reshape(-1)))}))

    def loss_block(self):
        logp = nb.log_softmax(self.logits)                            # (T,V)
        rows = []
        for t in range(self.T):
            y = int(self.targets[t, 0])
            p = math.exp(logp[t, y])
            rows.append([str(t + 1), show(self.chars[t]), show(self.chars[t + 1]), f"{p:.4f}",
                         f"{-logp[t, y]:.4f}", f"{-logp[t, y] / math.log(2):.4f}"])
        V = self.cfg.vocab_size
        top = "" if self.s.layer == self.cfg.layers - 1 else \
            f" (layers {self.s.layer + 1}..{self.cfg.layers - 1} run by {self.cell}_forward on top)"
        self.blocks.append(Block("the loss", ["Model.forward (logits = h_t·W_y + b_y)", "softmax_xent",
                                              "log_softmax"], [
            ("eq", "p_t = softmax(h_t·W_y + b_y)     L = -(1/T) Σ_t log p_t[next char]" + top),
            ("table", ["t", "reads", "target", "p(target)", "-log p (nats)", "bits"], rows),
            ("eq", f"L = {self.loss:.6f} nats/char = {self.loss / math.log(2):.6f} bits/char"),
            ("text", f"a uniform guess over the {V} symbols costs log {V} = {math.log(V):.4f} nats/char")],
            phase="loss"))

    # -- backward ----------------------------------------------------------
    def dh_from_above(self):
        """dL/dh_t of the explained layer (T,1,H): output projection, then lstm_backward of layers above."""
        P, L = self.model.params, self.cfg.layers
        dx = (self.dlogits @ P["Wy"].T).reshape(self.T, 1, self.H)   # as in Model.forward_backward
        zeros = np.zeros((1, self.H))
        for l in reversed(range(self.s.layer + 1, L)):
            dx = nb.cell_backward(dx, zeros, zeros, self.caches[l])[0]   # the layer's own backward
        return dx

    def backward_blocks(self):
        H = self.H
        Wh, Wx = self.W[:H], self.W[H:]
        dhs = self.dh_from_above()                                    # (T,1,H)
        self.blocks.append(Block("backward: where the gradient enters", ["softmax_xent", "Model.forward_backward"]
                                 + (["lstm_backward (layers above)"] if self.s.layer < self.cfg.layers - 1 else []), [
            ("eq", "dL/dlogits_t = (softmax(logits_t) - onehot(target_t)) / T"),
            ("eq", "dL/dh_t (from above) = dL/dlogits_t · W_y^T"),
            ("text", "BPTT now walks the steps in reverse: each h_t also gets a gradient from step t+1, "
                     "and each c_t one from c_{t+1}")], phase="backward"))
        zeros = np.zeros((1, H))
        dh_next, dc_next = zeros, zeros
        dW, db = np.zeros_like(self.W), np.zeros_like(self.b)
        dxs = np.zeros_like(self.x)
        for t in reversed(range(self.T)):
            c_prev = self.cs[t - 1] if t > 0 else self.c0            # (1,H)
            h_prev = self.hs[t - 1] if t > 0 else self.h0            # (1,H)
            dh = dhs[t] + dh_next                                     # (1,H) both paths into h_t
            do, dc, di, df, dg, dc_prev = nb.cell_update_backward(dh, dc_next, self.acts[t], self.cs[t], c_prev)
            dz = nb.gate_activations_backward(di, df, dg, do, self.acts[t])   # (1,G)
            dW_t = np.concatenate([h_prev, self.x[t]], axis=1).T @ dz        # (H+I,G)
            dh_prev, dxs[t] = dz @ Wh.T, dz @ Wx.T                    # as in lstm_backward
            dW += dW_t
            db += dz.reshape(-1)
            for name, v in zip(("dh", "do", "dc", "di", "df", "dg", "dc_prev", "dz"),
                               (dh, do, dc, di, df, dg, dc_prev, dz)):
                self.values[name, t + 1] = v.reshape(-1)
            self.backward_step_blocks(t, dhs[t], dh_next, dh, dc_next, (do, dc, di, df, dg, dc_prev), dz,
                                      dW_t, dh_prev, dxs[t])
            dh_next, dc_next = dh_prev, dc_prev
        self.values["dW"], self.values["db"] = dW, db
        self.total_block(dhs, dW, db, dxs, dh_next, dc_next)

    def backward_step_blocks(self, t, dh_above, dh_next, dh, dc_next, cell_grads, dz, dW_t, dh_prev, dx_t):
        n = t + 1
        do, dc, di, df, dg, dc_prev = (v.reshape(-1) for v in cell_grads)
        i, f, g, o = (self.gate(self.acts[t], k) for k in range(4))
        tc = np.tanh(self.cs[t].reshape(-1))
        self.blocks.append(Block(f"backward step {n}: dL/dh_t, dL/do_t, dL/dc_t", [
            "lstm_backward (dh = dL/dh_t from above + from step t+1)", "cell_update_backward"], [
            self.vec("dL/dh_t from above", dh_above), self.vec("dL/dh_t from step t+1", dh_next),
            self.vec("dL/dh_t (sum)", dh),
            ("eq", "h_t = o_t ⊙ tanh(c_t)   =>   dL/do_t = dL/dh_t ⊙ tanh(c_t)"),
            self.vec("dL/do_t", do),
            ("eq", "dL/dc_t = dL/dc_t via c_{t+1} (= dL/dc_{t+1} ⊙ f_{t+1}) + dL/dh_t ⊙ o_t ⊙ (1 - tanh²(c_t))"),
            self.vec("via c_{t+1}", dc_next), self.vec("via h_t", dh.reshape(-1) * o * (1 - tc * tc)),
            self.vec("dL/dc_t", dc)], phase="backward", step=n))
        self.blocks.append(Block(f"backward step {n}: the gates and dL/dc_{{t-1}}", ["cell_update_backward"], [
            ("eq", "c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t   =>"),
            ("eq", "dL/df_t = dL/dc_t ⊙ c_{t-1}   dL/di_t = dL/dc_t ⊙ g_t   dL/dg_t = dL/dc_t ⊙ i_t"),
            self.vec("dL/df_t", df), self.vec("dL/di_t", di), self.vec("dL/dg_t", dg),
            ("eq", "dL/dc_{t-1} = dL/dc_t ⊙ f_t     (the memory path back in time: only a product of forget gates)"),
            self.vec("dL/dc_{t-1}", dc_prev)], phase="backward", step=n))
        items = [("eq", "σ' = s(1-s), tanh' = 1 - tanh²:  dz_i = dL/di ⊙ i(1-i)  dz_f = dL/df ⊙ f(1-f)  "
                        "dz_g = dL/dg ⊙ (1-g²)  dz_o = dL/do ⊙ o(1-o)")]
        items += [self.vec(f"dz_{gname}", self.gate(dz, k)) for k, gname in enumerate(GATES)]
        self.blocks.append(Block(f"backward step {n}: pre-activation gradients dz_t", ["gate_activations_backward"],
                                 items, phase="backward", step=n))
        items = [("eq", "dW += [h_{t-1}, x_t]^T · dz_t     db += dz_t   (lstm_backward sums all steps in one product)"),
                 ("eq", "dL/dh_{t-1} = dz_t · W_h^T        dL/dx_t = dz_t · W_x^T")]
        items += self.dW_items(dW_t)
        items += [self.vec("db_t = dz_t", dz), self.vec("dL/dh_{t-1}", dh_prev), self.vec("dL/dx_t", dx_t)]
        self.blocks.append(Block(f"backward step {n}: weight-gradient contributions", ["lstm_backward"],
                                 items, phase="backward", step=n, diagram={
            "h_prev": ("dL/dh_{t-1}", self.cut(dh_prev.reshape(-1))), "x": ("dL/dx_t", dx_t.reshape(-1)),
            "c_prev": ("dL/dc_{t-1}", self.cut(dc_prev)), "f": ("dL/df_t", self.cut(df)),
            "i": ("dL/di_t", self.cut(di)), "g": ("dL/dg_t", self.cut(dg)), "o": ("dL/do_t", self.cut(do)),
            "c": ("dL/dc_t", self.cut(dc)), "tanh_c": ("via c_{t+1}", self.cut(dc_next.reshape(-1))),
            "h": ("dL/dh_t", self.cut(dh.reshape(-1)))}))

    def dW_items(self, dW_t):
        H, I, u = self.H, self.I, self.units
        rows = list(range(u)) + list(range(H, H + I))                 # shown h rows, all x rows
        cols = [k * H + j for k in range(4) for j in range(u)]
        if len(rows) * len(cols) > 120:
            return [("text", f"dW_t has shape {dW_t.shape}; |dW_t| = {np.linalg.norm(dW_t):.4e}")]
        return [("mat", "dW_t", dW_t[np.ix_(rows, cols)], [f"h{j}" for j in range(u)] + [f"x{j}" for j in range(I)],
                 [f"{g}{j}" for g in GATES for j in range(u)])]

    def total_block(self, dhs, dW, db, dxs, dh0, dc0):
        s = self.s
        if s.layer == 0:
            _, dW_ref, db_ref, dh0_ref, dc0_ref = nb.embed_lstm_backward(dhs, np.zeros_like(dh0), np.zeros_like(dc0),
                                                                         self.caches[0][1])
            dx_ref = nb.lstm_backward(dhs, np.zeros_like(dh0), np.zeros_like(dc0), self.lcache)[0]
        else:
            dx_ref, dW_ref, db_ref, dh0_ref, dc0_ref = nb.lstm_backward(dhs, np.zeros_like(dh0),
                                                                        np.zeros_like(dc0), self.lcache)
        _, grads, _ = self.model.forward_backward(self.tokens, self.targets, self.model.zero_state(1))
        diffs = [("dW", dW, dW_ref), ("db", db, db_ref), ("dx", dxs, dx_ref), ("dh_0", dh0, dh0_ref),
                 ("dc_0", dc0, dc0_ref),
                 (f"dW (Model.forward_backward, grads['W{s.layer}'])", dW, grads[f"W{s.layer}"])]
        rows = [[name, f"{float(np.abs(a - r).max()):.1e}"] for name, a, r in diffs]
        for name, a, r in diffs:   # the sums are in another order, so only rounding may differ
            if float(np.abs(a - r).max()) > 1e-9 * (1.0 + float(np.abs(r).max())):
                raise AssertionError(f"explain's per-step {name} disagrees with the reference")
        self.blocks.append(Block("backward: the sums, checked against lstm_backward", [
            "lstm_backward" if s.layer else "embed_lstm_backward", "Model.forward_backward"], [
            ("eq", "dW = Σ_t [h_{t-1}, x_t]^T · dz_t      db = Σ_t dz_t"),
            ("table", ["sum of the steps above vs the reference", "max |difference|"], rows),
            ("text", "lstm_backward gets the same numbers with one product over all T·B rows; "
                     "the training code uses exactly that function")], phase="backward"))

    # -- gradient check ----------------------------------------------------
    def check_blocks(self, max_check, seed):
        rows, worst = gradient_check(self.model, self.tokens, self.targets, max_check, seed)
        self.blocks.append(Block("gradient check: analytic (BPTT) vs central difference", [
            "Model.forward_backward", "Model.loss"], [
            ("eq", "numeric = (L(θ + ε) - L(θ - ε)) / 2ε,  ε = 1e-5;  rel err = |a - n| / max(|a|, |n|)"),
            ("table", ["param", "shape", "checked", "worst entry", "analytic", "numeric", "rel err", "max abs err",
                       "verdict"], rows),
            ("text", f"largest relative error {worst:.1e}. An entry passes when its relative error is below "
                     f"{REL_OK:g} or its absolute error below {ABS_OK:g}: in float64 the rounding of L(θ ± ε) alone "
                     f"is ~1e-11 absolute, so an entry whose gradient is itself tiny shows a larger relative error "
                     f"without anything being wrong ('-' where both are below {TINY:g}). WRONG (n) counts the "
                     f"entries that fail.")],
            phase="check"))


def gradient_check(model, tokens, targets, max_check=64, seed=0, eps=1e-5):
    """Central differences for up to max_check entries of every parameter (a seeded sample beyond that).

    -> (table rows, worst relative error over the entries whose gradient is not ~0)
    """
    state = model.zero_state(1)
    _, grads, _ = model.forward_backward(tokens, targets, state)
    rng = np.random.default_rng(seed)
    rows, worst_all = [], 0.0
    for name, p in model.params.items():
        flat = p.reshape(-1)                                          # a view: perturb in place
        idx = np.arange(flat.size) if flat.size <= max_check else np.sort(rng.choice(flat.size, max_check, False))
        g = grads[name].reshape(-1)
        worst, max_abs, bad = None, 0.0, 0                           # worst: (rel, index, analytic, numeric)
        for k in idx:
            old = flat[k]
            flat[k] = old + eps
            lp, _ = model.loss(tokens, targets, state)
            flat[k] = old - eps
            lm, _ = model.loss(tokens, targets, state)
            flat[k] = old
            num, ana = (lp - lm) / (2 * eps), float(g[k])
            err = abs(ana - num)
            max_abs = max(max_abs, err)
            big = max(abs(ana), abs(num))
            rel = err / big if big > TINY else -1.0
            bad += not (err < ABS_OK or 0 <= rel < REL_OK)
            if worst is None or rel > worst[0]:
                worst = (rel, int(k), ana, num)
        rel, k, ana, num = worst
        worst_all = max(worst_all, rel)
        where = np.unravel_index(k, p.shape)
        rows.append([name, "x".join(map(str, p.shape)), f"{len(idx)}/{flat.size}", str(tuple(int(w) for w in where)),
                     f"{ana: .6e}", f"{num: .6e}", f"{rel:.1e}" if rel >= 0 else "-", f"{max_abs:.1e}",
                     "ok" if not bad else f"WRONG ({bad})"])
    return rows, worst_all


def _same(a, b, what, ref):
    if not np.array_equal(a, b):
        raise AssertionError(f"{what} disagrees with {ref}")


def explain(setup: Setup, backward=False, units=None, max_check=64, seed=0, explainer=None):
    """-> the list of Blocks for `setup` (forward, the loss, and with backward=True BPTT + gradient check).

    explainer: the class that steps the cell (default Explainer, the LSTM's; explain_cells for the others)."""
    if units is not None and units < 1:
        raise UserError(f"--units must be >= 1 (got {units})")
    check_max_check(setup, max_check, backward)
    return (explainer or Explainer)(setup, units).run(backward, max_check, seed)


def check_max_check(setup, max_check, backward=True):
    """UserError unless 1 <= max_check and (with backward) the gradient check stays within MAX_CHECK_WORK.

    Each checked entry costs two forward passes over the text, about T·(P + STEP_OVERHEAD) multiply-adds
    each; up to max_check entries of every parameter are checked (from the largest size on, every entry)."""
    sizes = [p.size for p in setup.params.values()]                 # entries of each parameter tensor
    per_entry = 2 * (len(setup.text) - 1) * (sum(sizes) + STEP_OVERHEAD)

    def cost(n):
        return per_entry * sum(min(n, s) for s in sizes)
    lo, hi = 1, max(sizes)                   # the largest useful value within the bound, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= MAX_CHECK_WORK else (lo, mid - 1)
    if max_check < 1 and lo == max(sizes):
        raise UserError(f"--max-check must be >= 1 (got {max_check}); from {lo} on it checks every entry")
    if max_check < 1 or (backward and max_check > lo < max(sizes)):
        raise UserError(f"--max-check must be in 1..{lo} for this model and text (got {max_check}): each checked "
                        f"entry costs two forward passes over the text, and more entries of each of its "
                        f"{len(sizes)} parameter tensors would cost over {MAX_CHECK_WORK:.0e} multiply-adds")
