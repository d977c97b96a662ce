"""`lstm-engine explain --cell peephole|coupled|gru`: one layer of an LSTM variant with real numbers.

As explain.py does for the LSTM, nothing here is a second cell: every number comes from the
reference functions that train models, backends/numpy_cells.py, reached through Model.forward
(embed_cell_forward / cell_forward) with the numpy backend:

    input_projection                       -> x_t·W_x + b for every step (gru: + b_x)
    peephole_gates, peephole_cell, peephole_output   -> i, f (peeping at c_{t-1}), g; c_t; o (peeping at c_t), h_t
    coupled_gates, coupled_cell            -> f, g, o; c_t with the input gate 1 - f_t, h_t
    gru_gates, gru_update                  -> r, z, n (r inside n); h_t
    *_backward of each group               -> the BPTT steps (explain_cells_bptt.py)
    cell_backward / embed_cell_backward, Model.forward_backward / Model.loss -> the sums, the gradient check

The lines repeated here are the loops' glue (z_t = xproj_t + h_{t-1}·W_h; for the gru
h_{t-1}·W_h + b_h; dL/dh_{t-1} = dz_t·W_h^T), and every value they give is compared with what the
forward's cache and cell_backward hold.

Dimension legend: T time steps, B batch (1 here), I input size, H hidden, G the gate blocks (4H for
peephole, 3H for coupled and gru), V vocab.
"""
from __future__ import annotations

import numpy as np

from ..backends import numpy_backend as nb
from ..backends import numpy_cells as nc
from ..core.model import CELL_PARAMS
from . import explain as ex
from .cells import GATES, NAMES
from .explain_cells_bptt import CellBackward

EQUATIONS = {
    "peephole": ["i_t = σ(W_i·[h_{t-1}, x_t] + w_ci ⊙ c_{t-1} + b_i)",
                 "f_t = σ(W_f·[h_{t-1}, x_t] + w_cf ⊙ c_{t-1} + b_f)",
                 "g_t = tanh(W_g·[h_{t-1}, x_t] + b_g)      c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t",
                 "o_t = σ(W_o·[h_{t-1}, x_t] + w_co ⊙ c_t + b_o)      h_t = o_t ⊙ tanh(c_t)"],
    "coupled": ["f_t = σ(W_f·[h_{t-1}, x_t] + b_f)   g_t = tanh(W_g·[h_{t-1}, x_t] + b_g)   "
                "o_t = σ(W_o·[h_{t-1}, x_t] + b_o)",
                "c_t = f_t ⊙ c_{t-1} + (1 - f_t) ⊙ g_t      h_t = o_t ⊙ tanh(c_t)",
                "(the input gate is i_t = 1 - f_t)"],
    "gru": ["r_t = σ(W_ir·x_t + b_ir + W_hr·h_{t-1} + b_hr)      z_t = σ(W_iz·x_t + b_iz + W_hz·h_{t-1} + b_hz)",
            "n_t = tanh(W_in·x_t + b_in + r_t ⊙ (W_hn·h_{t-1} + b_hn))",
            "h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}"],
}
LAYOUT = {
    "peephole": ["W (H+I, 4H) multiplies [h_{t-1}, x_t]: rows 0..H-1 are W_h, rows H.. are W_x;",
                 "column blocks are the gates i, f, g, o as the LSTM's;",
                 "wc (3, H) holds the diagonal peepholes w_ci, w_cf, w_co (Gers & Schmidhuber 2000)"],
    "coupled": ["W (H+I, 3H) multiplies [h_{t-1}, x_t]: rows 0..H-1 are W_h, rows H.. are W_x; column blocks f, g, o",
                "(no input-gate block: the coupled input and forget gate, CIFG)"],
    "gru": ["W (H+I, 3H): rows 0..H-1 are W_h (times h_{t-1}), rows H.. are W_x (times x_t); column blocks r, z, n",
            "(torch.nn.GRU's order); two biases, b_x = bias_ih and b_h = bias_hh,",
            "kept apart because b_hn sits inside the reset gate's product"],
}
INIT = {"peephole": "the forget-gate slice b_f starts at 1 (init_params in model.py), as the LSTM's",
        "coupled": "the forget-gate slice b_f starts at 1 (init_params in model.py): keep by default, write 1 - f",
        "gru": "every parameter drawn as torch.nn.GRU draws it, U(-1/sqrt(H), 1/sqrt(H)); no bias set to 1"}


class CellExplainer(CellBackward, ex.Explainer):
    """explain.Explainer for the peephole, coupled and gru cells: the same page, each cell's own blocks."""

    def read_cache(self, lc):
        H, cell = self.H, self.cfg.cell
        self.gates = GATES[cell]
        self.p = self.model.layer_params(self.s.layer)               # the layer's parameters by short name
        if cell == "peephole":     # x (T,1,I), W (H+I,G), wc (3,H), h0, c0 (1,H), hs, cs (T,1,H), acts (T,1,G)
            self.x, self.W, self.wc, self.h0, self.c0, self.hs, self.cs, self.acts = lc
        elif cell == "coupled":    # x, W, h0, c0, hs, cs, acts
            self.x, self.W, self.h0, self.c0, self.hs, self.cs, self.acts = lc
        else:                      # gru: x, W, h0, hs, acts, hn (T,1,H) = W_hn h_{t-1} + b_hn; c stays zero
            self.x, self.W, self.h0, self.hs, self.acts, self.hn = lc
            self.c0 = np.zeros((1, H))
        self.b = self.p["bx"] if cell == "gru" else self.p["b"]     # (G,) the bias input_projection adds

    def src(self, name):
        return "numpy_cells." + name

    # -- the model -------------------------------------------------------------
    def setup_block(self):
        s, H, I, cell = self.s, self.H, self.I, self.cfg.cell
        layer_in = "x_t = Emb[char] (embed_cell_forward gathers it)" if s.layer == 0 else \
            f"x_t = h_t of layer {s.layer - 1} (cell_forward of the layer below)"
        items = [("text", f"model: {s.origin}; cell: {cell}"),
                 ("text", f"layer {s.layer} of {self.cfg.layers}: input size I = {I}, hidden size H = {H}, "
                          f"vocabulary V = {self.cfg.vocab_size}; {layer_in}"),
                 ("text", f"text {s.text!r}: {self.T} steps; step t reads character t and predicts character t+1")]
        items += [("eq", line) for line in EQUATIONS[cell] + LAYOUT[cell]]
        if self.units < H:
            items.append(("text", f"vectors of size H show units 0..{self.units - 1} of {H} (--units)"))
        if self.W.size <= 96:
            rows = [f"h{j}" for j in range(H)] + [f"x{j}" for j in range(I)]
            cols = [f"{g}{j}" for g in self.gates for j in range(H)]
            items.append(("mat", "W", self.W, rows, cols))
            for k in CELL_PARAMS[cell][1:]:
                v = self.p[k]
                if k == "wc":
                    items.append(("mat", "wc", v, ["w_ci", "w_cf", "w_co"], [f"u{j}" for j in range(H)]))
                else:
                    items.append(("mat", k, v.reshape(1, -1), [k], cols))
            items.append(("text", INIT[cell]))
        self.blocks.append(ex.Block("the model", ["model.init_params" if "fresh" in s.origin else "checkpoint.load",
                                                  "model.Model.forward"], items, phase="setup"))

    # -- forward -----------------------------------------------------------------
    def forward_blocks(self):
        H = self.H
        xproj = nc.input_projection(self.x, self.W[H:], self.b)      # (T,1,G)
        h, c = self.h0, self.c0                                       # (1,H) each
        step = {"peephole": self.peephole_step, "coupled": self.coupled_step, "gru": self.gru_step}[self.cfg.cell]
        for t in range(self.T):
            self.input_block(t, h)
            h_new, c_new = step(t, xproj[t], h, c)
            ex._same(h_new, self.hs[t], self.src(self.cfg.cell + "_forward") + " step", "the forward's h_t")
            self.values["h", t + 1] = h_new.reshape(-1)
            if self.cfg.cell != "gru":
                ex._same(c_new, self.cs[t], "the cell update", "the forward's c_t")
                self.values["c", t + 1] = c_new.reshape(-1)
            h, c = h_new, c_new

    def input_block(self, t, h):
        what = f"step {t + 1}/{self.T}: reads {ex.show(self.chars[t])}, predicts {ex.show(self.chars[t + 1])}"
        xin = "Emb[" + ex.show(self.chars[t]) + "]" if self.s.layer == 0 else f"h_t of layer {self.s.layer - 1}"
        eq = ("x_t·W_x + b_x and h_{t-1}·W_h + b_h are formed apart: r_t multiplies the n block of the second"
              if self.cfg.cell == "gru" else
              "[h_{t-1}, x_t]: the previous output stacked on the new input (rows of W: W_h then W_x)")
        self.blocks.append(ex.Block(f"{what} - the input [h_{{t-1}}, x_t]", [self.src(self.cfg.cell + "_forward")], [
            ("eq", eq), self.vec("h_{t-1}", h), self.vec(f"x_t = {xin}", self.x[t])], step=t + 1))

    def keep(self, t, pre, a):
        ex._same(a, self.acts[t], "the gates explain computed", "the forward's gates")
        self.values["pre", t + 1], self.values["a", t + 1] = pre.reshape(-1), a.reshape(-1)

    def gate_items(self, k, label, terms, pre, a, fn="σ"):
        """The equation of gate k, the terms of its pre-activation, the pre-activation and the gate."""
        g = self.gates[k]
        items = [("eq", f"{g}_t = {fn}({label})    ({NAMES[g]})")]
        items += [self.vec("  " + name, v) for name, v in terms]
        return items + [self.vec("  pre-activation", self.gate(pre, k)),
                        self.vec(f"  activation {g}_t", self.gate(a, k))]

    def peephole_step(self, t, xp, h, c):
        H, wc = self.H, self.wc
        z = xp + h @ self.W[:H]                                       # (1,4H) before the peepholes, as in the loop
        i, f, g = nc.peephole_gates(z, wc, c)                         # (1,H) each
        c_new = nc.peephole_cell(i, f, g, c)
        o, h_new = nc.peephole_output(z[:, 3 * H:], wc, c_new)
        a = np.concatenate([i, f, g, o], axis=1)                      # (1,4H)
        peep = np.concatenate([wc[0] * c, wc[1] * c, 0 * c, wc[2] * c_new], axis=1)   # (1,4H)
        pre = z + peep
        self.keep(t, pre, a)
        items = []
        for k, g_ in enumerate("if"):
            items += self.gate_items(k, f"W_{g_}·[h_{{t-1}}, x_t] + w_c{g_} ⊙ c_{{t-1}} + b_{g_}",
                                     [(f"W_{g_}·[h_{{t-1}}, x_t] + b_{g_}", self.gate(z, k)),
                                      (f"w_c{g_} ⊙ c_{{t-1}}", self.gate(peep, k))], pre, a)
        items += self.gate_items(2, "W_g·[h_{t-1}, x_t] + b_g", [], pre, a, "tanh")
        self.blocks.append(ex.Block(f"step {t + 1} - the gates i, f, g (i and f peep at c_{{t-1}})", [
            "numpy_cells.input_projection (x_t·W_x + b, all steps in one product)",
            "numpy_cells.peephole_forward (+ h_{t-1}·W_h)", "numpy_cells.peephole_gates"], items, step=t + 1))
        self.cell_block(t, c, f * c.reshape(-1), "i_t ⊙ g_t", i * g, c_new, "peephole_cell",
                        "c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t     (forget some of the old memory, write some new)")
        items = self.gate_items(3, "W_o·[h_{t-1}, x_t] + w_co ⊙ c_t + b_o",
                                [("W_o·[h_{t-1}, x_t] + b_o", self.gate(z, 3)), ("w_co ⊙ c_t", self.gate(peep, 3))],
                                pre, a)
        self.output_block(t, h, c, i, f, g, o, c_new, h_new, "peephole_output",
                          items, "step {} - the output gate (peeping at the new c_t) and h_t")
        return h_new, c_new

    def coupled_step(self, t, xp, h, c):
        H = self.H
        z = xp + h @ self.W[:H]                                       # (1,3H) as in coupled_forward's loop
        a = nc.coupled_gates(z)                                       # (1,3H)
        h_new, c_new = nc.coupled_cell(a, c)                          # (1,H) each
        self.keep(t, z, a)
        f, g, o = (self.gate(a, k) for k in range(3))
        items = self.gate_items(0, "W_f·[h_{t-1}, x_t] + b_f", [], z, a)
        items += self.gate_items(1, "W_g·[h_{t-1}, x_t] + b_g", [], z, a, "tanh")
        items += self.gate_items(2, "W_o·[h_{t-1}, x_t] + b_o", [], z, a)
        items += [("eq", "i_t = 1 - f_t    (the input gate: what is forgotten is what gets written)"),
                  self.vec("i_t = 1 - f_t", 1.0 - f)]
        self.blocks.append(ex.Block(f"step {t + 1} - the three gates f, g, o (the input gate is 1 - f_t)", [
            "numpy_cells.input_projection (x_t·W_x + b, all steps in one product)",
            "numpy_cells.coupled_forward (+ h_{t-1}·W_h)", "numpy_cells.coupled_gates (σ on f, o; tanh on g)"],
            items, step=t + 1))
        self.cell_block(t, c, f * c.reshape(-1), "(1 - f_t) ⊙ g_t", (1.0 - f) * g, c_new, "coupled_cell",
                        "c_t = f_t ⊙ c_{t-1} + (1 - f_t) ⊙ g_t     (keep a share of the memory, write the rest)")
        self.output_block(t, h, c, 1.0 - f, f, g, o, c_new, h_new, "coupled_cell", [],
                          "step {} - the output")
        return h_new, c_new

    def cell_block(self, t, c, kept, write_label, write, c_new, fn, eq):
        self.blocks.append(ex.Block(f"step {t + 1} - the cell update", [self.src(fn)], [
            ("eq", eq), self.vec("c_{t-1}", c), self.vec("f_t ⊙ c_{t-1}", kept), self.vec(write_label, write),
            self.vec("c_t", c_new)], step=t + 1))

    def output_block(self, t, h, c, i, f, g, o, c_new, h_new, fn, items, title):
        tc = np.tanh(c_new.reshape(-1))
        i_label = "1 - f_t" if self.cfg.cell == "coupled" else "i_t"
        self.blocks.append(ex.Block(title.format(t + 1), [self.src(fn)], items + [
            ("eq", "h_t = o_t ⊙ tanh(c_t)      (the output gate decides what of the memory to show)"),
            self.vec("tanh(c_t)", tc), self.vec("o_t", o), self.vec("h_t", h_new)], step=t + 1,
            diagram={"h_prev": ("h_{t-1}", self.cut(h.reshape(-1))), "x": ("x_t", self.x[t].reshape(-1)),
                     "c_prev": ("c_{t-1}", self.cut(c.reshape(-1))), "f": ("f_t", self.cut(f)),
                     "i": (i_label, self.cut(i)), "g": ("g_t", self.cut(g)), "o": ("o_t", self.cut(o)),
                     "c": ("c_t", self.cut(c_new.reshape(-1))), "tanh_c": ("tanh(c_t)", self.cut(tc)),
                     "h": ("h_t", self.cut(h_new.reshape(-1)))}))

    def gru_step(self, t, xp, h, c):
        H = self.H
        hp = h @ self.W[:H] + self.p["bh"]                            # (1,3H) the recurrent half, as in the loop
        a = nc.gru_gates(xp, hp)                                      # (1,3H) r, z, n
        h_new = nc.gru_update(a, h)                                   # (1,H)
        ex._same(hp[:, 2 * H:], self.hn[t], "W_hn h_{t-1} + b_hn", "gru_forward's hn")
        r, z, n = (self.gate(a, k) for k in range(3))
        rhn = r * self.gate(hp, 2)                                    # (H,) r_t ⊙ (W_hn h_{t-1} + b_hn)
        pre = xp + np.concatenate([hp[:, :2 * H], rhn[None]], axis=1)   # (1,3H)
        self.keep(t, pre, a)
        self.values["hn", t + 1] = self.gate(hp, 2).copy()
        items = []
        for k, g_ in enumerate("rz"):
            items += self.gate_items(k, f"W_i{g_}·x_t + b_i{g_} + W_h{g_}·h_{{t-1}} + b_h{g_}",
                                     [(f"W_i{g_}·x_t + b_i{g_}", self.gate(xp, k)),
                                      (f"W_h{g_}·h_{{t-1}} + b_h{g_}", self.gate(hp, k))], pre, a)
        self.blocks.append(ex.Block(f"step {t + 1} - the reset and update gates r, z", [
            "numpy_cells.input_projection (x_t·W_x + b_x, all steps in one product)",
            "numpy_cells.gru_forward (h_{t-1}·W_h + b_h)", "numpy_cells.gru_gates"], items, step=t + 1))
        items = self.gate_items(2, "W_in·x_t + b_in + r_t ⊙ (W_hn·h_{t-1} + b_hn)",
                                [("W_in·x_t + b_in", self.gate(xp, 2)), ("W_hn·h_{t-1} + b_hn", self.gate(hp, 2)),
                                 ("r_t ⊙ (W_hn·h_{t-1} + b_hn)", rhn)], pre, a, "tanh")
        self.blocks.append(ex.Block(f"step {t + 1} - the candidate n (the reset gate inside)",
                                    ["numpy_cells.gru_gates"], items, step=t + 1))
        self.blocks.append(ex.Block(f"step {t + 1} - the new state h_t", ["numpy_cells.gru_update"], [
            ("eq", "h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}     (keep a share z of the old state, the rest from n)"),
            self.vec("h_{t-1}", h), self.vec("(1 - z_t) ⊙ n_t", (1.0 - z) * n),
            self.vec("z_t ⊙ h_{t-1}", z * h.reshape(-1)),
            self.vec("h_t", h_new)], step=t + 1, diagram=self.gru_diagram({
                "h_prev": ("h_{t-1}", h), "x": ("x_t", self.x[t]), "r": ("r_t", r), "z": ("z_t", z), "n": ("n_t", n),
                "hn": ("W_hn·h_{t-1} + b_hn", self.gate(hp, 2)), "z_h": ("z_t ⊙ h_{t-1}", z * h.reshape(-1)),
                "zn": ("(1 - z_t) ⊙ n_t", (1.0 - z) * n), "h": ("h_t", h_new)})))
        return h_new, c

    def gru_diagram(self, slots):
        """slot -> (label, vector) for explain_render.gru_svg; hidden-sized vectors cut to --units."""
        return {k: (label, self.cut(np.asarray(v).reshape(-1))) for k, (label, v) in slots.items()}

    # -- the sums ----------------------------------------------------------------
    def total_block(self, dhs, dp, dxs, dh0, dc0):
        s, cell = self.s, self.cfg.cell
        zeros = np.zeros((1, self.H))
        if s.layer == 0:
            _, dp_ref, dh0_ref, dc0_ref = nb.embed_cell_backward(dhs, zeros, zeros, self.caches[0])
            dx_ref = nb.cell_backward(dhs, zeros, zeros, (cell, self.lcache))[0]
        else:
            dx_ref, dp_ref, dh0_ref, dc0_ref = nb.cell_backward(dhs, zeros, zeros, self.caches[s.layer])
        _, grads, _ = self.model.forward_backward(self.tokens, self.targets, self.model.zero_state(1))
        diffs = [("d" + k, dp[k], dp_ref[k]) for k in CELL_PARAMS[cell]]
        diffs += [("dx", dxs, dx_ref), ("dh_0", dh0, dh0_ref)] + ([] if cell == "gru" else [("dc_0", dc0, dc0_ref)])
        diffs += [(f"d{k} (Model.forward_backward, grads['{k}{s.layer}'])", dp[k], grads[f"{k}{s.layer}"])
                  for k in CELL_PARAMS[cell]]
        rows = [[name, f"{float(np.abs(a - r).max()):.1e}"] for name, a, r in diffs]
        for name, a, r in diffs:   # the sums are in another order, so only rounding may differ
            if float(np.abs(a - r).max()) > 1e-9 * (1.0 + float(np.abs(r).max())):
                raise AssertionError(f"explain's per-step {name} disagrees with the reference")
        sums = {"peephole": "dW = Σ_t [h_{t-1}, x_t]^T · dz_t    db = Σ_t dz_t    dwc = Σ_t (dz_i ⊙ c_{t-1}, "
                            "dz_f ⊙ c_{t-1}, dz_o ⊙ c_t)",
                "coupled": "dW = Σ_t [h_{t-1}, x_t]^T · dz_t      db = Σ_t dz_t",
                "gru": "dW_h = Σ_t h_{t-1}^T · dhp_t   dW_x = Σ_t x_t^T · dxp_t   "
                       "db_h = Σ_t dhp_t   db_x = Σ_t dxp_t"}
        self.blocks.append(ex.Block("backward: the sums, checked against cell_backward", [
            "cell_backward" if s.layer else "embed_cell_backward", "Model.forward_backward"], [
            ("eq", sums[cell]),
            ("table", ["sum of the steps above vs the reference", "max |difference|"], rows),
            ("text", f"{cell}_backward gets the same numbers with one product over all T·B rows "
                     "(numpy_cells.weight_gradients); the training code uses exactly that function")],
            phase="backward"))


def explain(setup, backward=False, units=None, max_check=64, seed=0):
    """-> the Blocks for `setup` of any cell: explain.explain for the lstm, CellExplainer for the others."""
    return ex.explain(setup, backward, units, max_check, seed, None if setup.cfg.cell == "lstm" else CellExplainer)
