"""`lstm-engine explain`: its numbers against PyTorch autograd, its gradient check, its formats and CLI."""
import functools
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner

import lstm_engine as le
from lstm_engine.storage import checkpoint
from lstm_engine.teaching import explain as ex
from lstm_engine.core import model as model_mod
from lstm_engine.backends import numpy_backend as nb
from lstm_engine.cli import main
from lstm_engine.teaching.explain_render import render

TEXT = "to be or"


def runner():
    """A CliRunner whose result has .stdout and .stderr apart (click 8.1 needs mix_stderr=False; 8.2 removed it)."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def run(setup, backward=True):
    e = ex.Explainer(setup)
    e.run(backward=backward)
    return e


def torch_reference(setup):
    """The same one-layer char model in PyTorch; autograd gives every per-step gradient."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    P = {k: torch.tensor(v, requires_grad=True) for k, v in setup.params.items()}
    ids = setup.vocab.encode(setup.text, strict=True).astype(np.int64)
    H, T = setup.cfg.hidden_size, len(ids) - 1
    x = P["Emb"][torch.tensor(ids[:-1])]                                   # (T,I)
    h, c = torch.zeros(1, H, dtype=torch.float64), torch.zeros(1, H, dtype=torch.float64)
    kept, hs = [], []
    for t in range(T):
        z = torch.cat([h, x[t:t + 1]], 1) @ P["W0"] + P["b0"]               # (1,4H), gates i f g o
        i, f = torch.sigmoid(z[:, :H]), torch.sigmoid(z[:, H:2 * H])
        g, o = torch.tanh(z[:, 2 * H:3 * H]), torch.sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        h = o * torch.tanh(c)
        for v in (z, i, f, g, o, c, h):
            v.retain_grad()
        kept.append(dict(z=z, i=i, f=f, g=g, o=o, c=c, h=h))
        hs.append(h)
    logits = torch.cat(hs) @ P["Wy"] + P["by"]
    loss = F.cross_entropy(logits, torch.tensor(ids[1:]))
    loss.backward()
    # an independent forward as well: torch.nn.LSTM with the same weights
    lstm = torch.nn.LSTM(setup.cfg.embed_size, H).double()
    W = setup.params["W0"]
    with torch.no_grad():
        lstm.weight_hh_l0.copy_(torch.tensor(W[:H].T))
        lstm.weight_ih_l0.copy_(torch.tensor(W[H:].T))
        lstm.bias_ih_l0.copy_(torch.tensor(setup.params["b0"]))
        lstm.bias_hh_l0.zero_()
        out, _ = lstm(x.detach()[:, None, :])
    return kept, P, loss.item(), out[:, 0].numpy()


def test_forward_and_backward_numbers_match_pytorch():
    setup = ex.tiny_setup(TEXT, input_size=2, hidden_size=3, seed=3)
    e = run(setup)
    kept, P, loss, nn_hs = torch_reference(setup)
    assert e.loss == pytest.approx(loss, rel=1e-12)
    H = 3
    for t, k in enumerate(kept, start=1):
        np.testing.assert_allclose(e.values["h", t], nn_hs[t - 1], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(e.values["c", t], k["c"].detach().numpy()[0], rtol=1e-10)
        np.testing.assert_allclose(e.values["z", t], k["z"].detach().numpy()[0], rtol=1e-10)
        # the BPTT quantities explain prints are the total gradients autograd finds
        np.testing.assert_allclose(e.values["dh", t], k["h"].grad.numpy()[0], rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(e.values["dc", t], k["c"].grad.numpy()[0], rtol=1e-9, atol=1e-14)
        for name in "ifgo":
            np.testing.assert_allclose(e.values["d" + name, t], k[name].grad.numpy()[0], rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(e.values["dz", t], k["z"].grad.numpy()[0], rtol=1e-9, atol=1e-14)
        if t > 1:   # dL/dc_{t-1} handed back from step t is c_{t-1}'s gradient from the memory path only
            f_t = k["f"].detach().numpy()[0]
            np.testing.assert_allclose(e.values["dc_prev", t], e.values["dc", t] * f_t, rtol=1e-12)
    np.testing.assert_allclose(e.values["dW"], P["W0"].grad.numpy(), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(e.values["db"], P["b0"].grad.numpy(), rtol=1e-9, atol=1e-14)
    assert H == e.H


def test_printed_blocks_name_real_reference_functions():
    blocks = ex.explain(ex.tiny_setup(TEXT), backward=True)
    named = set()
    for b in blocks:
        assert b.sources, b.title
        for s in b.sources:
            fn = s.split(" ")[0]
            modname, _, rest = fn.partition(".")
            if modname in ("Model", "model", "checkpoint"):
                obj = {"Model": model_mod.Model, "model": model_mod, "checkpoint": checkpoint}[modname]
                assert callable(functools.reduce(getattr, rest.split("."), obj)), fn
            else:
                assert callable(getattr(nb, fn)), fn
                named.add(fn)
    for fn in ("input_projection", "gate_activations", "cell_update", "softmax_xent", "cell_update_backward",
               "gate_activations_backward", "lstm_forward", "lstm_backward"):
        assert fn in named


def test_text_output_shows_the_equations_and_the_numbers_it_computed():
    e = run(ex.tiny_setup(TEXT, seed=1))
    out = "\n".join(render(e.blocks, "text"))
    for eq in ("f_t = σ(W_f·[h_{t-1}, x_t] + b_f)", "c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t", "h_t = o_t ⊙ tanh(c_t)",
               "dL/dc_{t-1} = dL/dc_t ⊙ f_t", "gradient check"):
        assert eq in out
    h2 = " ".join(f"{v:.4f}" for v in e.values["h", 2])
    assert re.sub(r"\s+", " ", h2) in re.sub(r"\s+", " ", out)     # the h_2 explain computed is the one printed
    assert f"L = {e.loss:.6f} nats/char" in out
    assert out.count("computed by:") == len(e.blocks)


def test_gradient_check_passes_and_catches_a_broken_backward(monkeypatch):
    setup = ex.tiny_setup(TEXT, seed=2)
    e = run(setup)
    rows = e.blocks[-1].items[1][2]
    assert [r[0] for r in rows] == ["Emb", "W0", "b0", "Wy", "by"]
    assert all(r[-1] == "ok" for r in rows)
    good = nb.gate_activations_backward

    def broken(di, df, dg, do, a):              # forgets the sigmoid derivative of the forget gate
        dz = good(di, df, dg, do, a)
        H = di.shape[-1]
        dz[:, H:2 * H] = df
        return dz
    monkeypatch.setattr(nb, "gate_activations_backward", broken)
    model = model_mod.Model(setup.cfg, nb, setup.params)
    ids = setup.vocab.encode(setup.text).astype(np.int64)
    rows, worst = ex.gradient_check(model, ids[:-1, None], ids[1:, None])
    verdict = {r[0]: r[-1] for r in rows}
    # the wrong dz_f also reaches dh_{t-1}, so every LSTM and embedding gradient is off; the output layer is not
    assert all(verdict[n].startswith("WRONG") for n in ("Emb", "W0", "b0"))
    assert verdict["Wy"] == verdict["by"] == "ok"
    assert worst > 1e-3


def test_split_cell_backward_is_the_composition_of_its_sub_steps():
    rng = np.random.default_rng(0)
    B, H = 2, 4
    a = nb.gate_activations(rng.standard_normal((B, 4 * H)))
    c, c_prev, dh, dcn = (rng.standard_normal((B, H)) for _ in range(4))
    dz, dc_prev = nb.lstm_step_backward(dh, dcn, a, c, c_prev)
    do, dc, di, df, dg, dc_prev2 = nb.cell_update_backward(dh, dcn, a, c, c_prev)
    np.testing.assert_array_equal(dz, nb.gate_activations_backward(di, df, dg, do, a))
    np.testing.assert_array_equal(dc_prev, dc_prev2)
    np.testing.assert_allclose(dc_prev, dc * a[:, H:2 * H])


@pytest.fixture
def ckpt(tmp_path):
    cfg = le.TrainConfig(backend="numpy", embed_size=4, hidden_size=5, layers=2, batch_size=2, seq_len=8, steps=3,
                         eval_every=0, sample_every=0, save_every=0, log_every=0, out=str(tmp_path / "run"))
    le.train(cfg, text="to be or not to be, that is the question.\n" * 6)
    return str(tmp_path / "run" / "latest.safetensors")


@pytest.mark.parametrize("layer", [0, 1])
def test_checkpoint_layers_explain_and_check(ckpt, layer):
    setup = ex.checkpoint_setup(ckpt, "to be", layer)
    e = run(setup)                                # raises if its per-step sums disagree with lstm_backward
    rows = e.blocks[-1].items[1][2]
    assert all(r[-1] == "ok" for r in rows), rows
    assert f"layer {layer} of 2" in "\n".join(render(e.blocks[:1], "text"))


def test_cli_formats(ckpt, tmp_path):
    r = runner().invoke(main, ["explain", "--backward", "--format", "markdown"])
    assert r.exit_code == 0, r.output
    assert "#### gradient check" in r.output and "`numpy_backend.cell_update_backward`" in r.output
    assert "| param | shape |" in r.output
    out = tmp_path / "ex.html"
    r = runner().invoke(main, ["explain", "--checkpoint", ckpt, "--text", "to be", "--layer", "1",
                               "--backward", "--format", "html", "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text(encoding="utf-8")
    root = ET.fromstring(page.split("\n", 1)[1])   # well-formed XHTML (the doctype line aside)
    ns = {"h": "http://www.w3.org/1999/xhtml", "s": "http://www.w3.org/2000/svg"}
    assert len(root.findall(".//s:svg", ns)) == 2 * 4   # one forward and one backward picture per step
    assert "tanh(c_t)" in page and "dL/dc_t" in page


def test_cli_interactive_waits_between_blocks():
    full = runner().invoke(main, ["explain"])
    n_blocks = full.output.count("\n== ")
    r = runner().invoke(main, ["explain", "--interactive"], input="\n" * 3 + "q\n")
    assert r.exit_code == 0
    assert r.stdout.count("\n== ") == 4 < n_blocks          # stopped at q after the fourth block
    assert r.stderr.count("[Enter") == 4


@pytest.mark.parametrize("args, msg", [
    (["--checkpoint", "CKPT", "--text", "to bé"], "not in the model's vocabulary"),
    (["--checkpoint", "CKPT", "--text", "to be", "--layer", "2"], "--layer must be in 0..1"),
    (["--checkpoint", "CKPT"], "needs --text"),
    (["--text", "x"], "2 to 33 characters"),
    (["--interactive", "--format", "html"], "--interactive"),
])
def test_cli_bad_input_is_one_line(ckpt, args, msg):
    args = [ckpt if a == "CKPT" else a for a in args]
    r = runner().invoke(main, ["explain", *args])
    assert r.exit_code == 2
    assert msg in r.stderr and r.stderr.count("\n") == 1


def test_walkthrough_pastes_real_explain_output():
    """docs/lstm-walkthrough.md quotes `lstm-engine explain [--cell X] --backward`; its blocks must be what that prints.

    The gradient-check and sums blocks are left out: their last digits are float64 rounding (1e-11 and
    below) and may differ between BLAS libraries.
    """
    import pathlib
    from lstm_engine.teaching import explain_cells
    doc = (pathlib.Path(__file__).parents[2] / "docs" / "lstm-walkthrough.md").read_text(encoding="utf-8")
    # a section headed '### ... (`--cell X`)' quotes `explain --cell X --backward`; the rest quotes the LSTM's
    parts = re.split(r"\n### [^\n]*\(`--cell (\w+)`\)\n", doc)
    sections = [("lstm", parts[0])] + list(zip(parts[1::2], parts[2::2]))
    assert [cell for cell, _ in sections] == ["lstm", "peephole", "coupled", "gru"]
    for cell, text in sections:
        quoted = [b.strip() for b in re.findall(r"```text\n(== .*?)```", text, re.S)]
        assert len(quoted) >= (10 if cell == "lstm" else 3), cell
        out = "\n".join(render(explain_cells.explain(ex.tiny_setup(cell=cell), backward=True), "text"))
        for block in quoted:
            if block.startswith(("== gradient check", "== backward: the sums")):
                continue
            assert block in out, (cell, block.splitlines()[0])
