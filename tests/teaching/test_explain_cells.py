"""`lstm-engine explain --cell peephole|coupled|gru`: its numbers against torch autograd written from the equations
(cell_oracle.py; the GRU's states also against torch.nn.GRU), its gradient check, its formats and CLI."""
import functools
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner

from cell_oracle import BLOCKS, nn_gru_hidden, torch_cell_reference
from lstm_engine.backends import numpy_backend as nb
from lstm_engine.backends import numpy_cells as nc
from lstm_engine.cli import main
from lstm_engine.core import model as model_mod
from lstm_engine.storage import checkpoint
from lstm_engine.teaching import explain as ex
from lstm_engine.teaching import explain_cells as exc
from lstm_engine.teaching.explain_render import render

TEXT = "to be or"
CELLS = ("peephole", "coupled", "gru")
PARAMS = {"peephole": ["Emb", "W0", "b0", "wc0", "Wy", "by"], "coupled": ["Emb", "W0", "b0", "Wy", "by"],
          "gru": ["Emb", "W0", "bx0", "bh0", "Wy", "by"]}


def run(setup, backward=True):
    e = exc.CellExplainer(setup)
    e.run(backward=backward)
    return e


def cat(d, names):
    """The tensors of `names` from a dict, concatenated -> (G,) numpy."""
    return np.concatenate([d[n].detach().numpy()[0] for n in names])


def grads(d, names):
    return np.concatenate([d[n].grad.numpy()[0] for n in names])


@pytest.mark.parametrize("cell", CELLS)
def test_forward_and_backward_numbers_match_autograd(cell):
    setup = ex.tiny_setup(TEXT, input_size=2, hidden_size=3, seed=3, cell=cell)
    e = run(setup)
    kept, P, loss = torch_cell_reference(setup)
    assert e.loss == pytest.approx(loss, rel=1e-12)
    gates = BLOCKS[cell]
    close = functools.partial(np.testing.assert_allclose, rtol=1e-9, atol=1e-14)
    for t, k in enumerate(kept, start=1):
        np.testing.assert_allclose(e.values["h", t], k["h"].detach().numpy()[0], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(e.values["pre", t], cat(k["pre"], gates), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(e.values["a", t], cat(k["act"], gates), rtol=1e-10, atol=1e-13)
        # the BPTT quantities explain prints are the total gradients autograd finds
        close(e.values["dh", t], k["h"].grad.numpy()[0])
        close(e.values["da", t], grads(k["act"], gates))
        close(e.values["dpre", t], grads(k["pre"], gates))
        if cell == "gru":
            np.testing.assert_allclose(e.values["hn", t], k["hn"].detach().numpy()[0], rtol=1e-10, atol=1e-13)
            close(e.values["dhn", t], k["hn"].grad.numpy()[0])
        else:
            np.testing.assert_allclose(e.values["c", t], k["c"].detach().numpy()[0], rtol=1e-10, atol=1e-13)
            close(e.values["dc", t], k["c"].grad.numpy()[0])
        if cell != "gru" and t > 1:   # dL/dc_{t-1} handed back by step t: all of c_{t-1}'s paths through step t
            direct = kept[t - 2]["c"].grad.numpy()[0] - e.values["dh", t - 1] * \
                kept[t - 2]["act"]["o"].detach().numpy()[0] * (1 - np.tanh(e.values["c", t - 1]) ** 2)
            if cell == "peephole":     # c_{t-1} also feeds o_{t-1} through its peephole
                direct -= e.values["dpre", t - 1][3 * 3:] * setup.params["wc0"][2]
            close(e.values["dc_prev", t], direct)
    for name in PARAMS[cell][1:-2]:
        close(e.values["d" + name[:-1]], P[name].grad.numpy())
    if cell == "gru":
        np.testing.assert_allclose(np.array([e.values["h", t] for t in range(1, len(kept) + 1)]),
                                   nn_gru_hidden(setup), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("cell", CELLS)
def test_blocks_name_real_reference_functions(cell):
    blocks = exc.explain(ex.tiny_setup(TEXT, cell=cell), backward=True)
    named = set()
    for b in blocks:
        assert b.sources, b.title
        for s in b.sources:
            fn = s.split(" ")[0]
            modname, _, rest = fn.partition(".")
            mods = {"Model": model_mod.Model, "model": model_mod, "checkpoint": checkpoint, "numpy_cells": nc}
            obj = functools.reduce(getattr, rest.split("."), mods[modname]) if modname in mods else getattr(nb, fn)
            assert callable(obj), fn
            named.add(rest if modname == "numpy_cells" else fn)
    groups = {"peephole": ("peephole_gates", "peephole_cell", "peephole_output", "peephole_output_backward",
                           "peephole_cell_backward", "peephole_gates_backward"),
              "coupled": ("coupled_gates", "coupled_cell", "coupled_cell_backward", "coupled_gates_backward"),
              "gru": ("gru_gates", "gru_update", "gru_update_backward", "gru_gates_backward")}[cell]
    assert set(groups) <= named
    assert {"input_projection", "embed_cell_backward", f"{cell}_forward", f"{cell}_backward"} <= named


EQUATIONS = {
    "peephole": ["i_t = σ(W_i·[h_{t-1}, x_t] + w_ci ⊙ c_{t-1} + b_i)", "o_t = σ(W_o·[h_{t-1}, x_t] + w_co ⊙ c_t + b_o)",
                 "w_ci ⊙ c_{t-1}", "w_co ⊙ c_t", "via o_t's peephole",
                 "dL/dc_{t-1} = dL/dc_t ⊙ f_t + dz_i ⊙ w_ci + dz_f ⊙ w_cf"],
    "coupled": ["c_t = f_t ⊙ c_{t-1} + (1 - f_t) ⊙ g_t", "i_t = 1 - f_t", "dL/df_t = dL/dc_t ⊙ (c_{t-1} - g_t)"],
    "gru": ["r_t = σ(W_ir·x_t + b_ir + W_hr·h_{t-1} + b_hr)",
            "n_t = tanh(W_in·x_t + b_in + r_t ⊙ (W_hn·h_{t-1} + b_hn))",
            "W_hn·h_{t-1} + b_hn", "r_t ⊙ (W_hn·h_{t-1} + b_hn)", "h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}",
            "dL/dhn_t = dL/da_n ⊙ r_t"],
}


@pytest.mark.parametrize("cell", CELLS)
def test_every_format_shows_the_cells_equations_and_numbers(cell):
    e = run(ex.tiny_setup(TEXT, seed=1, cell=cell))
    text = "\n".join(render(e.blocks, "text"))
    md = "\n".join(render(e.blocks, "markdown"))
    page = "".join(render(e.blocks, "html"))
    root = ET.fromstring(page.split("\n", 1)[1])                    # well-formed XHTML
    page_text = "".join(root.itertext())
    h2 = " ".join(f"{v:.4f}" for v in e.values["h", 2])
    for out in (text, md, page_text):
        for eq in EQUATIONS[cell] + ["gradient check", f"L = {e.loss:.6f} nats/char"]:
            assert eq in out, (eq, out[:200])
        if out is not page_text:                                    # the h_2 explain computed is the one printed
            assert re.sub(r"\s+", " ", h2) in re.sub(r"\s+", " ", out)
    assert re.search("</td><td[^>]*>".join(re.escape(f"{v:.4f}") for v in e.values["h", 2]), page)   # a table row
    assert text.count("computed by:") == len(e.blocks)
    assert f"`numpy_cells.{cell}_gates" in md or f"`numpy_cells.{cell}_update" in md
    svgs = root.findall(".//{http://www.w3.org/2000/svg}svg")
    assert len(svgs) == 2 * e.T                                      # the cell's picture, forward and backward
    boxes = {"".join(t.itertext()) for t in svgs[0].iter("{http://www.w3.org/2000/svg}text")}
    want = {"peephole": ["σ (i)", "σ (f)", "tanh (g)", "σ (o)"], "coupled": ["1-f (i)", "σ (f)", "tanh (g)", "σ (o)"],
            "gru": ["σ (r)", "σ (z)", "tanh (n)"]}[cell]
    assert set(want) <= boxes, boxes
    if cell == "gru":                                                # no cell state anywhere in the forward
        assert "cell candidate" not in text and "c_t" not in text.split("== the loss")[0]


@pytest.mark.parametrize("cell", CELLS)
def test_gradient_check_rows_are_every_parameter_and_small(cell):
    e = run(ex.tiny_setup(TEXT, seed=2, cell=cell))
    rows = e.blocks[-1].items[1][2]
    assert [r[0] for r in rows] == PARAMS[cell]
    assert all(r[-1] == "ok" for r in rows), rows
    assert all(r[6] == "-" or float(r[6]) < ex.REL_OK for r in rows)
    checked = [int(r[2].split("/")[0]) for r in rows]
    assert checked == [int(r[2].split("/")[1]) for r in rows]        # the tiny model: every entry


BREAKS = {   # one derivative dropped from each cell's backward: the check must say WRONG where it lands
    "peephole": ("peephole_gates_backward", lambda good: lambda *a: good(*a)[:3] + (0 * good(*a)[3],) + good(*a)[4:]),
    "coupled": ("coupled_cell_backward", lambda good: lambda *a: (a[0] * 0,) + good(*a)[1:]),
    "gru": ("gru_update_backward", lambda good: lambda *a: good(*a)[:2] + (0 * good(*a)[2],)),
}


@pytest.mark.parametrize("cell", CELLS)
def test_gradient_check_catches_a_broken_backward(cell, monkeypatch):
    setup = ex.tiny_setup(TEXT, seed=2, cell=cell)
    name, make = BREAKS[cell]
    monkeypatch.setattr(nc, name, make(getattr(nc, name)))
    model = model_mod.Model(setup.cfg, nb, setup.params)
    ids = setup.vocab.encode(setup.text).astype(np.int64)
    rows, worst = ex.gradient_check(model, ids[:-1, None], ids[1:, None])
    verdict = {r[0]: r[-1] for r in rows}
    assert verdict["W0"].startswith("WRONG") and verdict["Emb"].startswith("WRONG")
    assert verdict["Wy"] == verdict["by"] == "ok"
    assert worst > 1e-3


@pytest.mark.parametrize("cell", CELLS)
def test_two_layers_each_layer_explains_and_checks(cell):
    setup = ex.tiny_setup(TEXT, seed=4, cell=cell)
    cfg = model_mod.ModelConfig(setup.cfg.vocab_size, 2, 3, layers=2, dtype="float64", cell=cell)
    for layer in (0, 1):
        s = ex.Setup(cfg, model_mod.init_params(cfg, 4), setup.vocab, TEXT, layer, "a fresh two-layer model")
        e = run(s)                                   # raises if its per-step sums disagree with cell_backward
        assert all(r[-1] == "ok" for r in e.blocks[-1].items[1][2])
        assert f"layer {layer} of 2" in "\n".join(render(e.blocks[:1], "text"))


def test_cli_cell_option_in_every_format(tmp_path):
    r = CliRunner().invoke(main, ["explain", "--cell", "gru", "--backward", "--format", "markdown"])
    assert r.exit_code == 0, r.output
    assert "`numpy_cells.gru_gates`" in r.output and "| bx0 |" in r.output
    out = tmp_path / "p.html"
    r = CliRunner().invoke(main, ["explain", "--cell", "peephole", "--backward", "--format", "html", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "w_co ⊙ c_t" in out.read_text(encoding="utf-8")
    r = CliRunner().invoke(main, ["explain", "--cell", "coupled"])
    assert r.exit_code == 0 and "i_t = 1 - f_t" in r.output
    r = CliRunner().invoke(main, ["explain", "--cell", "nope"])
    assert r.exit_code == 2 and "nope" in r.output


def test_cli_explains_a_checkpoints_own_cell_and_inspect_offers_its_states(cell_ckpt, tmp_path):
    gru = cell_ckpt("gru")
    r = CliRunner().invoke(main, ["explain", "--checkpoint", gru, "--text", "ab(", "--layer", "1", "--backward"])
    assert r.exit_code == 0, r.output
    assert "cell: gru" in r.output and "n_t = tanh(W_in·x_t" in r.output and "| bh1 " not in r.output
    assert re.search(r"\n   bh1 .* ok\n", r.output)                         # the gradient check covers bh1
    assert CliRunner().invoke(main, ["explain", "--checkpoint", gru, "--text", "ab", "--cell", "gru"]).exit_code == 0
    r = CliRunner().invoke(main, ["explain", "--checkpoint", gru, "--text", "ab", "--cell", "lstm"])
    assert r.exit_code == 2 and "--cell lstm: this checkpoint holds a gru model" in r.output
    out = tmp_path / "z.html"
    r = CliRunner().invoke(main, ["inspect", gru, "--prime", "ab(ba)", "--unit", "1", "--state", "z",
                                  "--html", str(out)])
    assert r.exit_code == 0 and 'title="z=' in out.read_text(encoding="utf-8")
    r = CliRunner().invoke(main, ["inspect", gru, "--prime", "ab(ba)", "--state", "c", "--html", str(out)])
    assert r.exit_code == 2 and "--state must be one of h, r, z, n for this gru model" in r.output
    assert r.output.strip().count("\n") == 0
