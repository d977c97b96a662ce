"""The three cell variants written from their equations in a few lines of torch autograd: explain's oracle.

Independent of the engine: the equations are those of docs/lstm-walkthrough.md section 9, the
parameter layout that of core/model.py (W rows [h_{t-1}; x_t], gate blocks in column order).
Dimension legend: T steps, I input size, H hidden, V vocabulary.
"""
import numpy as np
import pytest

BLOCKS = {"peephole": ("i", "f", "g", "o"), "coupled": ("f", "g", "o"), "gru": ("r", "z", "n")}


def _step(cell, P, h, c, x, H):
    """One step of layer 0 -> h, c, dict of the tensors whose gradients explain prints."""
    torch = pytest.importorskip("torch")
    sig, tanh = torch.sigmoid, torch.tanh
    if cell == "gru":
        gx = x @ P["W0"][H:] + P["bx0"]                                  # (1,3H) W_i* x + b_i*
        hn = h @ P["W0"][:H, 2 * H:] + P["bh0"][2 * H:]                  # (1,H) W_hn h + b_hn
        gh = h @ P["W0"][:H, :2 * H] + P["bh0"][:2 * H]                  # (1,2H) W_h{r,z} h + b_h{r,z}
        pre = {"r": gx[:, :H] + gh[:, :H], "z": gx[:, H:2 * H] + gh[:, H:]}
        r, z = sig(pre["r"]), sig(pre["z"])
        pre["n"] = gx[:, 2 * H:] + r * hn
        n = tanh(pre["n"])
        h = (1 - z) * n + z * h
        return h, c, dict(pre=pre, act={"r": r, "z": z, "n": n}, hn=hn, h=h)
    zz = torch.cat([h, x], 1) @ P["W0"] + P["b0"]                        # (1,4H) or (1,3H)
    if cell == "peephole":
        wc = P["wc0"]                                                    # (3,H) w_ci, w_cf, w_co
        pre = {"i": zz[:, :H] + wc[0] * c, "f": zz[:, H:2 * H] + wc[1] * c, "g": zz[:, 2 * H:3 * H]}
        i, f, g = sig(pre["i"]), sig(pre["f"]), tanh(pre["g"])
        c = f * c + i * g
        pre["o"] = zz[:, 3 * H:] + wc[2] * c
        o = sig(pre["o"])
        act = {"i": i, "f": f, "g": g, "o": o}
    else:                                                                # coupled: i = 1 - f
        pre = {"f": zz[:, :H], "g": zz[:, H:2 * H], "o": zz[:, 2 * H:]}
        f, g, o = sig(pre["f"]), tanh(pre["g"]), sig(pre["o"])
        c = f * c + (1 - f) * g
        act = {"f": f, "g": g, "o": o}
    h = act["o"] * tanh(c)
    return h, c, dict(pre=pre, act=act, c=c, h=h)


def torch_cell_reference(setup):
    """-> (per step: dict of tensors with .grad, parameters with .grad, loss) for a one-layer `setup`."""
    torch = pytest.importorskip("torch")
    P = {k: torch.tensor(v, requires_grad=True) for k, v in setup.params.items()}
    ids = setup.vocab.encode(setup.text, strict=True).astype(np.int64)
    H, T = setup.cfg.hidden_size, len(ids) - 1
    x = P["Emb"][torch.tensor(ids[:-1])]                                 # (T,I)
    h, c = torch.zeros(1, H, dtype=torch.float64), torch.zeros(1, H, dtype=torch.float64)
    kept, hs = [], []
    for t in range(T):
        h, c, k = _step(setup.cfg.cell, P, h, c, x[t:t + 1], H)
        for v in list(k["pre"].values()) + list(k["act"].values()) + [k[n] for n in ("c", "h", "hn") if n in k]:
            v.retain_grad()
        kept.append(k)
        hs.append(h)
    logits = torch.cat(hs) @ P["Wy"] + P["by"]                           # (T,V)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]))
    loss.backward()
    return kept, P, loss.item()


def nn_gru_hidden(setup):
    """h_t of every step from torch.nn.GRU itself with the setup's weights -> (T,H)."""
    torch = pytest.importorskip("torch")
    H, p = setup.cfg.hidden_size, setup.params
    ids = setup.vocab.encode(setup.text, strict=True).astype(np.int64)
    gru = torch.nn.GRU(setup.cfg.embed_size, H).double()
    with torch.no_grad():
        gru.weight_hh_l0.copy_(torch.tensor(p["W0"][:H].T))
        gru.weight_ih_l0.copy_(torch.tensor(p["W0"][H:].T))
        gru.bias_ih_l0.copy_(torch.tensor(p["bx0"]))
        gru.bias_hh_l0.copy_(torch.tensor(p["bh0"]))
        out, _ = gru(torch.tensor(p["Emb"][ids[:-1]])[:, None, :])
    return out[:, 0].numpy()
