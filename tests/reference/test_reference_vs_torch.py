"""Correctness ladder, rung 3: the reference model against torch.nn.LSTM (float64), where torch is installed.

Dimension legend: T time, B batch, E embedding, H hidden, V vocab.
"""
import numpy as np
import pytest

from lstm_engine.backends import numpy_backend as ref
from lstm_engine.core.model import Model, ModelConfig

from parity import Parity

torch = pytest.importorskip("torch")


def torch_model(params, cfg):
    """nn.Embedding -> nn.LSTM -> nn.Linear holding our weights (bias_hh = 0, bias_ih = b)."""
    V, E, H, L = cfg.vocab_size, cfg.embed_size, cfg.hidden_size, cfg.layers
    emb = torch.nn.Embedding(V, E).double()
    lstm = torch.nn.LSTM(E, H, L).double()
    lin = torch.nn.Linear(H, V).double()
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(params["Emb"]))
        for l in range(L):
            W = params[f"W{l}"]
            getattr(lstm, f"weight_hh_l{l}").copy_(torch.from_numpy(W[:H].T.copy()))
            getattr(lstm, f"weight_ih_l{l}").copy_(torch.from_numpy(W[H:].T.copy()))
            getattr(lstm, f"bias_ih_l{l}").copy_(torch.from_numpy(params[f"b{l}"]))
            getattr(lstm, f"bias_hh_l{l}").zero_()
        lin.weight.copy_(torch.from_numpy(params["Wy"].T.copy()))
        lin.bias.copy_(torch.from_numpy(params["by"]))
    return emb, lstm, lin


def test_loss_and_every_gradient_match_torch(rng):
    cfg = ModelConfig(vocab_size=11, embed_size=5, hidden_size=6, layers=3, dtype="float64")
    model = Model(cfg, ref, seed=5)
    T, B, H, L = 7, 4, 6, 3
    tokens = rng.integers(0, 11, (T, B))
    targets = rng.integers(0, 11, (T, B))
    h0 = rng.standard_normal((L, B, H)) * 0.5
    c0 = rng.standard_normal((L, B, H)) * 0.5
    state = [[h0[l].copy(), c0[l].copy()] for l in range(L)]
    loss, grads, new_state = model.forward_backward(tokens, targets, state)

    emb, lstm, lin = torch_model(model.params, cfg)
    out, (hT, cT) = lstm(emb(torch.from_numpy(tokens)), (torch.from_numpy(h0), torch.from_numpy(c0)))
    logits = lin(out.reshape(T * B, H))
    tloss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(targets.reshape(-1)))
    tloss.backward()

    expected = {"Emb": emb.weight.grad.numpy(), "Wy": lin.weight.grad.numpy().T, "by": lin.bias.grad.numpy()}
    for l in range(L):
        expected[f"W{l}"] = np.concatenate([getattr(lstm, f"weight_hh_l{l}").grad.numpy().T,
                                            getattr(lstm, f"weight_ih_l{l}").grad.numpy().T])
        bih = getattr(lstm, f"bias_ih_l{l}").grad.numpy()
        assert np.allclose(bih, getattr(lstm, f"bias_hh_l{l}").grad.numpy())   # both see the same gradient
        expected[f"b{l}"] = bih
    with Parity(f"reference L{L} vs torch.nn.LSTM", "numpy", ref="torch") as p:
        p.check("loss", loss, tloss.item(), "float64")
        for l in range(L):
            p.check(f"hT{l}", new_state[l][0], hT[l].detach().numpy(), "float64")
            p.check(f"cT{l}", new_state[l][1], cT[l].detach().numpy(), "float64")
        for name, g in expected.items():
            p.check("d" + name, grads[name], g, "float64", "grad")
