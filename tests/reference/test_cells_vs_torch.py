"""The reference's cell variants against torch (float64), where torch is installed: the gru against torch.nn.GRU,
peephole and coupled against a few lines of torch autograd written here from the equations (an independent oracle).

Loss, final states and every gradient, with the tolerances of test_reference_vs_torch.py.
Dimension legend: T time, B batch, E embedding, H hidden, V vocab, L layers.
"""
import numpy as np
import pytest

from lstm_engine.backends import numpy_backend as ref
from lstm_engine.core.model import Model, ModelConfig

from parity import Parity

torch = pytest.importorskip("torch")
T, B, V, E, H, L = 7, 4, 11, 5, 6, 3


def problem(rng, cell):
    """A 3-layer float64 model of `cell`, a window of tokens and targets, a random initial state."""
    cfg = ModelConfig(vocab_size=V, embed_size=E, hidden_size=H, layers=L, dtype="float64", cell=cell)
    model = Model(cfg, ref, seed=5)
    tokens, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))   # (T,B)
    h0 = rng.standard_normal((L, B, H)) * 0.5                                  # (L,B,H)
    c0 = rng.standard_normal((L, B, H)) * 0.5
    state = [[h0[l].copy(), c0[l].copy()] for l in range(L)]
    return model, tokens, targets, h0, c0, state


def compare(title, model, loss, grads, new_state, tloss, hT, cT, expected):
    with Parity(title, "numpy", ref="torch") as p:
        p.check("loss", loss, tloss, "float64")
        for l in range(L):
            p.check(f"hT{l}", new_state[l][0], hT[l], "float64")
            p.check(f"cT{l}", new_state[l][1], cT[l], "float64")
        assert set(expected) == set(grads) == set(model.params)
        for name, g in expected.items():
            p.check("d" + name, grads[name], g, "float64", "grad")


def test_gru_matches_torch_nn_gru(rng):
    model, tokens, targets, h0, c0, state = problem(rng, "gru")
    loss, grads, new_state = model.forward_backward(tokens, targets, state)
    P = model.params
    emb, gru, lin = torch.nn.Embedding(V, E).double(), torch.nn.GRU(E, H, L).double(), torch.nn.Linear(H, V).double()
    with torch.no_grad():                                  # nn.GRU's layout: weight_ih (3H,I), weight_hh (3H,H)
        emb.weight.copy_(torch.from_numpy(P["Emb"]))
        for l in range(L):
            getattr(gru, f"weight_hh_l{l}").copy_(torch.from_numpy(P[f"W{l}"][:H].T.copy()))
            getattr(gru, f"weight_ih_l{l}").copy_(torch.from_numpy(P[f"W{l}"][H:].T.copy()))
            getattr(gru, f"bias_ih_l{l}").copy_(torch.from_numpy(P[f"bx{l}"]))
            getattr(gru, f"bias_hh_l{l}").copy_(torch.from_numpy(P[f"bh{l}"]))
        lin.weight.copy_(torch.from_numpy(P["Wy"].T.copy()))
        lin.bias.copy_(torch.from_numpy(P["by"]))
    out, hT = gru(emb(torch.from_numpy(tokens)), torch.from_numpy(h0))
    tloss = torch.nn.functional.cross_entropy(lin(out.reshape(T * B, H)), torch.from_numpy(targets.reshape(-1)))
    tloss.backward()
    expected = {"Emb": emb.weight.grad.numpy(), "Wy": lin.weight.grad.numpy().T, "by": lin.bias.grad.numpy()}
    for l in range(L):
        g = {k: getattr(gru, f"{k}_l{l}").grad.numpy() for k in ("weight_hh", "weight_ih", "bias_ih", "bias_hh")}
        expected[f"W{l}"] = np.concatenate([g["weight_hh"].T, g["weight_ih"].T])
        expected[f"bx{l}"], expected[f"bh{l}"] = g["bias_ih"], g["bias_hh"]
    # the GRU carries c unchanged: the final c is the initial one
    compare(f"reference gru L{L} vs torch.nn.GRU", model, loss, grads, new_state, tloss.item(),
            hT.detach().numpy(), c0, expected)


def torch_cell_step(cell, W, b, wc, x, h, c):
    """One step of peephole or coupled, written from the equations of CELLS (not from our code)."""
    z = torch.cat([h, x], dim=1) @ W + b                  # (B,G) over [h_{t-1}, x_t]
    if cell == "peephole":
        zi, zf, zg, zo = z.split(H, dim=1)
        i = torch.sigmoid(zi + wc[0] * c)
        f = torch.sigmoid(zf + wc[1] * c)
        c = f * c + i * torch.tanh(zg)
        o = torch.sigmoid(zo + wc[2] * c)
    else:
        zf, zg, zo = z.split(H, dim=1)
        f = torch.sigmoid(zf)
        c = f * c + (1 - f) * torch.tanh(zg)
        o = torch.sigmoid(zo)
    return o * torch.tanh(c), c


@pytest.mark.parametrize("cell", ["peephole", "coupled"])
def test_peephole_and_coupled_match_torch_autograd_of_their_equations(rng, cell):
    model, tokens, targets, h0, c0, state = problem(rng, cell)
    loss, grads, new_state = model.forward_backward(tokens, targets, state)
    tp = {n: torch.from_numpy(p.copy()).requires_grad_() for n, p in model.params.items()}
    x = tp["Emb"][torch.from_numpy(tokens)]                # (T,B,E)
    hT, cT = [], []
    for l in range(L):
        h, c, hs = torch.from_numpy(h0[l]), torch.from_numpy(c0[l]), []
        for t in range(T):
            h, c = torch_cell_step(cell, tp[f"W{l}"], tp[f"b{l}"], tp.get(f"wc{l}"), x[t], h, c)
            hs.append(h)
        x = torch.stack(hs)                                # (T,B,H) the next layer's input
        hT.append(h.detach().numpy())
        cT.append(c.detach().numpy())
    logits = x.reshape(T * B, H) @ tp["Wy"] + tp["by"]
    tloss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(targets.reshape(-1)))
    tloss.backward()
    expected = {n: t.grad.numpy() for n, t in tp.items()}
    compare(f"reference {cell} L{L} vs torch autograd", model, loss, grads, new_state, tloss.item(), hT, cT, expected)
