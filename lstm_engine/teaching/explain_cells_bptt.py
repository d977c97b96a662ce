"""explain's BPTT for the peephole, coupled and gru cells: each step through the reference's backward groups.

The loop mirrors numpy_cells.peephole_backward / coupled_backward / gru_backward: the same group
functions in the same order; what it repeats is the loop's glue (dh = dL/dh_t from above + from
step t+1, dL/dh_{t-1} = dz_t·W_h^T, the step's weight products) and the terms it prints beside
them.  explain_cells.CellExplainer.total_block checks the sums against cell_backward.

Dimension legend: T steps, I input size, H hidden, G the gate blocks (4H peephole, 3H coupled and gru).
"""
from __future__ import annotations

import numpy as np

from ..backends import numpy_cells as nc
from ..core.model import CELL_PARAMS
from .explain import Block

ENTRY = {"peephole": "and each c_t one from step t+1: through c_{t+1} and the peepholes of i_{t+1}, f_{t+1}",
         "coupled": "and each c_t one from c_{t+1}",
         "gru": "the GRU has no cell state: h_t carries all the memory back"}


class CellBackward:
    """The backward half of explain_cells.CellExplainer (a mixin: it reads the explainer's arrays)."""

    def backward_blocks(self):
        H, cell = self.H, self.cfg.cell
        dhs = self.dh_from_above()                                    # (T,1,H)
        self.blocks.append(Block("backward: where the gradient enters", ["softmax_xent", "Model.forward_backward"]
                                 + (["cell_backward (layers above)"] if self.s.layer < self.cfg.layers - 1 else []), [
            ("eq", "dL/dlogits_t = (softmax(logits_t) - onehot(target_t)) / T"),
            ("eq", "dL/dh_t (from above) = dL/dlogits_t · W_y^T"),
            ("text", f"BPTT now walks the steps in reverse: each h_t also gets a gradient from step t+1, "
                     f"{ENTRY[cell]}")], phase="backward"))
        zeros = np.zeros((1, H))
        dh_next, dc_next = zeros, zeros
        dp = {k: np.zeros_like(self.p[k]) for k in CELL_PARAMS[cell]}
        dxs = np.zeros_like(self.x)                                   # (T,1,I)
        step = {"peephole": self.peephole_back, "coupled": self.coupled_back, "gru": self.gru_back}[cell]
        for t in reversed(range(self.T)):
            h_prev = self.hs[t - 1] if t > 0 else self.h0            # (1,H)
            dh = dhs[t] + dh_next                                     # (1,H) both paths into h_t
            self.values["dh", t + 1] = dh.reshape(-1)
            dh_next, dc_next, dxs[t], dp_t = step(t, dhs[t], dh_next, dh, dc_next, h_prev)
            for k, v in dp_t.items():
                dp[k] += v
        for k, v in dp.items():
            self.values["d" + k] = v
        self.total_block(dhs, dp, dxs, dh_next, dc_next)

    def dh_items(self, dh_above, dh_next, dh):
        return [self.vec("dL/dh_t from above", dh_above), self.vec("dL/dh_t from step t+1", dh_next),
                self.vec("dL/dh_t (sum)", dh)]

    def weights_block(self, t, h_prev, dz, dx_t, dh_prev, eqs, extra, diagram=None):
        """dW_t = [h_{t-1}, x_t]^T · dz_t (gru: the two halves apart), the step's bias terms, dL/dh_{t-1}, dL/dx_t."""
        dzh, dzx = dz if isinstance(dz, tuple) else (dz, dz)          # (1,G) each: of h_{t-1}·W_h, of x_t·W_x
        dW_t = np.concatenate([h_prev.T @ dzh, self.x[t].T @ dzx], axis=0)   # (H+I,G)
        items = [("eq", e) for e in eqs] + self.dW_items(dW_t) + extra
        items += [self.vec("dL/dh_{t-1}", dh_prev), self.vec("dL/dx_t", dx_t)]
        self.blocks.append(Block(f"backward step {t + 1}: weight-gradient contributions",
                                 [self.src(self.cfg.cell + "_backward")], items, phase="backward", step=t + 1,
                                 diagram=diagram))
        return dW_t

    def dW_items(self, dW_t):
        H, I, u = self.H, self.I, self.units
        rows = list(range(u)) + list(range(H, H + I))                 # shown h rows, all x rows
        cols = [k * H + j for k in range(len(self.gates)) for j in range(u)]
        if len(rows) * len(cols) > 120:
            return [("text", f"dW_t has shape {dW_t.shape}; |dW_t| = {np.linalg.norm(dW_t):.4e}")]
        return [("mat", "dW_t", dW_t[np.ix_(rows, cols)], [f"h{j}" for j in range(u)] + [f"x{j}" for j in range(I)],
                 [f"{g}{j}" for g in self.gates for j in range(u)])]

    # -- peephole: peephole_output_backward, peephole_cell_backward, peephole_gates_backward ----------
    def peephole_back(self, t, dh_above, dh_next, dh, dc_next, h_prev):
        H, n, wc = self.H, t + 1, self.wc
        c, c_prev = self.cs[t], (self.cs[t - 1] if t > 0 else self.c0)      # (1,H) each
        i, f, g, o = (self.gate(self.acts[t], k) for k in range(4))
        dzo, dc, dwco = nc.peephole_output_backward(dh, dc_next, o, c, wc)
        di, df, dg, dc_prev = nc.peephole_cell_backward(dc, i, f, g, c_prev)
        dzi, dzf, dzg, dc_peep, dwci, dwcf = nc.peephole_gates_backward(di, df, dg, i, f, g, wc, c_prev)
        dz = np.concatenate([dzi, dzf, dzg, dzo], axis=1)             # (1,4H)
        tc = np.tanh(c.reshape(-1))
        do = dh.reshape(-1) * tc                                      # dL/do_t, for the page
        self.values["dc", n], self.values["dc_prev", n] = dc.reshape(-1), (dc_prev + dc_peep).reshape(-1)
        self.values["da", n] = np.concatenate([di, df, dg, do[None]], axis=1).reshape(-1)
        self.values["dpre", n] = dz.reshape(-1)
        self.blocks.append(Block(f"backward step {n}: dL/dh_t, the output gate, dL/dc_t", [
            "numpy_cells.peephole_backward (dh = dL/dh_t from above + from step t+1)",
            "numpy_cells.peephole_output_backward"], self.dh_items(dh_above, dh_next, dh) + [
            ("eq", "h_t = o_t ⊙ tanh(c_t), o_t = σ(z_o + w_co ⊙ c_t)  =>  dL/do_t = dL/dh_t ⊙ tanh(c_t), "
                   "dz_o = dL/do_t ⊙ o_t(1 - o_t)"),
            self.vec("dL/do_t", do), self.vec("dz_o", dzo),
            ("eq", "dL/dc_t = via c_{t+1} + dL/dh_t ⊙ o_t ⊙ (1 - tanh²(c_t)) + dz_o ⊙ w_co  (c_t also feeds o_t)"),
            self.vec("via c_{t+1}", dc_next), self.vec("via h_t", dh.reshape(-1) * o * (1 - tc * tc)),
            self.vec("via o_t's peephole", dzo * wc[2]), self.vec("dL/dc_t", dc),
            ("eq", "dw_co += dz_o ⊙ c_t"), self.vec("dw_co (this step)", dwco)], phase="backward", step=n))
        self.blocks.append(Block(f"backward step {n}: the gates i, f, g and dL/dc_{{t-1}}", [
            "numpy_cells.peephole_cell_backward", "numpy_cells.peephole_gates_backward"], [
            ("eq", "c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t   =>"),
            ("eq", "dL/df_t = dL/dc_t ⊙ c_{t-1}   dL/di_t = dL/dc_t ⊙ g_t   dL/dg_t = dL/dc_t ⊙ i_t"),
            self.vec("dL/df_t", df), self.vec("dL/di_t", di), self.vec("dL/dg_t", dg),
            ("eq", "dz_i = dL/di ⊙ i(1-i)   dz_f = dL/df ⊙ f(1-f)   dz_g = dL/dg ⊙ (1-g²)"),
            self.vec("dz_i", dzi), self.vec("dz_f", dzf), self.vec("dz_g", dzg),
            ("eq", "dL/dc_{t-1} = dL/dc_t ⊙ f_t + dz_i ⊙ w_ci + dz_f ⊙ w_cf   (the memory path and the peepholes)"),
            self.vec("via c_t", dc_prev), self.vec("via the peepholes", dc_peep),
            self.vec("dL/dc_{t-1}", dc_prev + dc_peep),
            ("eq", "dw_ci += dz_i ⊙ c_{t-1}     dw_cf += dz_f ⊙ c_{t-1}"),
            self.vec("dw_ci (this step)", dwci), self.vec("dw_cf (this step)", dwcf)], phase="backward", step=n))
        dh_prev, dx_t = dz @ self.W[:H].T, dz @ self.W[H:].T        # as in peephole_backward's loop
        dW_t = self.weights_block(t, h_prev, dz, dx_t, dh_prev, [
            "dW += [h_{t-1}, x_t]^T · dz_t     db += dz_t   (peephole_backward sums all steps in one product)",
            "dL/dh_{t-1} = dz_t · W_h^T        dL/dx_t = dz_t · W_x^T"], [self.vec("db_t = dz_t", dz)],
            self.diagram(dh_prev, dx_t, dc_prev + dc_peep, df, di, dg, do, dc, dc_next, dh))
        dwc = np.stack([dwci, dwcf, dwco])                           # (3,H)
        return dh_prev, dc_prev + dc_peep, dx_t, {"W": dW_t, "b": dz.reshape(-1), "wc": dwc}

    def diagram(self, dh_prev, dx_t, dc_prev, df, di, dg, do, dc, dc_next, dh):
        cut = lambda v: self.cut(np.asarray(v).reshape(-1))          # noqa: E731
        i_label = "dL/d(1-f_t)" if self.cfg.cell == "coupled" else "dL/di_t"
        return {"h_prev": ("dL/dh_{t-1}", cut(dh_prev)), "x": ("dL/dx_t", np.asarray(dx_t).reshape(-1)),
                "c_prev": ("dL/dc_{t-1}", cut(dc_prev)), "f": ("dL/df_t", cut(df)), "i": (i_label, cut(di)),
                "g": ("dL/dg_t", cut(dg)), "o": ("dL/do_t", cut(do)), "c": ("dL/dc_t", cut(dc)),
                "tanh_c": ("via c_{t+1}", cut(dc_next)), "h": ("dL/dh_t", cut(dh))}

    # -- coupled: coupled_cell_backward, coupled_gates_backward -----------------------------------
    def coupled_back(self, t, dh_above, dh_next, dh, dc_next, h_prev):
        H, n = self.H, t + 1
        a, c, c_prev = self.acts[t], self.cs[t], (self.cs[t - 1] if t > 0 else self.c0)
        df, dg, do, dc_prev = nc.coupled_cell_backward(dh, dc_next, a, c, c_prev)
        dz = nc.coupled_gates_backward(df, dg, do, a)                 # (1,3H)
        f, g, o = (self.gate(a, k) for k in range(3))
        tc = np.tanh(c.reshape(-1))
        via_h = dh.reshape(-1) * o * (1 - tc * tc)
        dc = dc_next.reshape(-1) + via_h                              # dL/dc_t, for the page (coupled_cell_backward's)
        self.values["dc", n], self.values["dc_prev", n] = dc, dc_prev.reshape(-1)
        self.values["da", n], self.values["dpre", n] = np.concatenate([df, dg, do], axis=1).reshape(-1), dz.reshape(-1)
        self.blocks.append(Block(f"backward step {n}: dL/dh_t, dL/do_t, dL/dc_t", [
            "numpy_cells.coupled_backward (dh = dL/dh_t from above + from step t+1)",
            "numpy_cells.coupled_cell_backward"], self.dh_items(dh_above, dh_next, dh) + [
            ("eq", "h_t = o_t ⊙ tanh(c_t)   =>   dL/do_t = dL/dh_t ⊙ tanh(c_t)"), self.vec("dL/do_t", do),
            ("eq", "dL/dc_t = dL/dc_t via c_{t+1} (= dL/dc_{t+1} ⊙ f_{t+1}) + dL/dh_t ⊙ o_t ⊙ (1 - tanh²(c_t))"),
            self.vec("via c_{t+1}", dc_next), self.vec("via h_t", via_h), self.vec("dL/dc_t", dc)],
            phase="backward", step=n))
        self.blocks.append(Block(f"backward step {n}: the gates and dL/dc_{{t-1}}", [
            "numpy_cells.coupled_cell_backward"], [
            ("eq", "c_t = f_t ⊙ c_{t-1} + (1 - f_t) ⊙ g_t   =>"),
            ("eq", "dL/df_t = dL/dc_t ⊙ (c_{t-1} - g_t)   (f_t keeps, and through 1 - f_t writes)   "
                   "dL/dg_t = dL/dc_t ⊙ (1 - f_t)"),
            self.vec("dL/df_t", df), self.vec("dL/dg_t", dg),
            ("eq", "dL/dc_{t-1} = dL/dc_t ⊙ f_t     (the memory path back in time: a product of forget gates)"),
            self.vec("dL/dc_{t-1}", dc_prev)], phase="backward", step=n))
        self.blocks.append(Block(f"backward step {n}: pre-activation gradients dz_t", [
            "numpy_cells.coupled_gates_backward"], [
            ("eq", "dz_f = dL/df ⊙ f(1-f)   dz_g = dL/dg ⊙ (1-g²)   dz_o = dL/do ⊙ o(1-o)")]
            + [self.vec(f"dz_{g_}", self.gate(dz, k)) for k, g_ in enumerate(self.gates)], phase="backward", step=n))
        dh_prev, dx_t = dz @ self.W[:H].T, dz @ self.W[H:].T        # as in coupled_backward's loop
        dW_t = self.weights_block(t, h_prev, dz, dx_t, dh_prev, [
            "dW += [h_{t-1}, x_t]^T · dz_t     db += dz_t   (coupled_backward sums all steps in one product)",
            "dL/dh_{t-1} = dz_t · W_h^T        dL/dx_t = dz_t · W_x^T"], [self.vec("db_t = dz_t", dz)],
            self.diagram(dh_prev, dx_t, dc_prev, df, dc * g, dg, do, dc, dc_next, dh))
        return dh_prev, dc_prev, dx_t, {"W": dW_t, "b": dz.reshape(-1)}

    # -- gru: gru_update_backward, gru_gates_backward ---------------------------------------------
    def gru_back(self, t, dh_above, dh_next, dh, dc_next, h_prev):
        H, n = self.H, t + 1
        a, hn = self.acts[t], self.hn[t]                              # (1,3H), (1,H)
        dz, dn, dh_direct = nc.gru_update_backward(dh, a, h_prev)
        dxp, dhp = nc.gru_gates_backward(dz, dn, a, hn)               # (1,3H) each
        r, z, n_ = (self.gate(a, k) for k in range(3))
        dan = self.gate(dxp, 2)                                       # dL/d(pre-activation of n)
        dr = dan * hn.reshape(-1)                                     # dL/dr_t, for the page
        self.values["da", n] = np.concatenate([dr[None], dz, dn], axis=1).reshape(-1)
        self.values["dpre", n], self.values["dhn", n] = dxp.reshape(-1), self.gate(dhp, 2).copy()
        self.blocks.append(Block(f"backward step {n}: dL/dh_t and the update", [
            "numpy_cells.gru_backward (dh = dL/dh_t from above + from step t+1)",
            "numpy_cells.gru_update_backward"], self.dh_items(dh_above, dh_next, dh) + [
            ("eq", "h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}   =>   dL/dz_t = dL/dh_t ⊙ (h_{t-1} - n_t)   "
                   "dL/dn_t = dL/dh_t ⊙ (1 - z_t)"),
            self.vec("dL/dz_t", dz), self.vec("dL/dn_t", dn),
            ("eq", "dL/dh_{t-1}, direct = dL/dh_t ⊙ z_t   (the GRU's memory path: a product of update gates)"),
            self.vec("dL/dh_{t-1} direct", dh_direct)], phase="backward", step=n))
        self.blocks.append(Block(f"backward step {n}: the candidate and the gates", [
            "numpy_cells.gru_gates_backward"], [
            ("eq", "n_t = tanh(a_n),  a_n = W_in·x_t + b_in + r_t ⊙ hn_t,  hn_t = W_hn·h_{t-1} + b_hn   =>"),
            ("eq", "dL/da_n = dL/dn_t ⊙ (1 - n_t²)   dL/dhn_t = dL/da_n ⊙ r_t   dL/dr_t = dL/da_n ⊙ hn_t"),
            self.vec("dL/da_n", dan), self.vec("dL/dhn_t", self.gate(dhp, 2)), self.vec("dL/dr_t", dr),
            ("eq", "dL/da_r = dL/dr_t ⊙ r(1-r)   dL/da_z = dL/dz_t ⊙ z(1-z)   (the same for both halves)"),
            self.vec("dL/da_r", self.gate(dxp, 0)), self.vec("dL/da_z", self.gate(dxp, 1)),
            ("eq", "input half dxp = (da_r, da_z, da_n);  recurrent half dhp = (da_r, da_z, dL/dhn_t)")],
            phase="backward", step=n))
        dh_prev, dx_t = dh_direct + dhp @ self.W[:H].T, dxp @ self.W[H:].T   # as in gru_backward's loop
        dW_t = self.weights_block(t, h_prev, (dhp, dxp), dx_t, dh_prev, [
            "dW_h += h_{t-1}^T · dhp_t   dW_x += x_t^T · dxp_t   db_h += dhp_t   db_x += dxp_t",
            "dL/dh_{t-1} = dL/dh_t ⊙ z_t + dhp_t · W_h^T        dL/dx_t = dxp_t · W_x^T"],
            [self.vec("db_x (this step) = dxp_t", dxp), self.vec("db_h (this step) = dhp_t", dhp)],
            self.gru_diagram({"h_prev": ("dL/dh_{t-1}", dh_prev), "x": ("dL/dx_t", dx_t), "r": ("dL/dr_t", dr),
                              "z": ("dL/dz_t", dz), "n": ("dL/dn_t", dn), "hn": ("dL/dhn_t", self.gate(dhp, 2)),
                              "z_h": ("dL/dh_{t-1} direct", dh_direct), "h": ("dL/dh_t", dh)}))
        return dh_prev, dc_next, dx_t, {"W": dW_t, "bx": dxp.reshape(-1), "bh": dhp.reshape(-1)}
