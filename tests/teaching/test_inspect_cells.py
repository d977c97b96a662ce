"""`inspect` on every cell: the states it offers and their values, against torch autograd written from the equations."""
import numpy as np
import pytest

import lstm_engine as le
from cell_oracle import BLOCKS, torch_cell_reference
from lstm_engine.backends import numpy_backend as nb
from lstm_engine.core.data import Vocab
from lstm_engine.core.model import CELLS, Model, ModelConfig, init_params
from lstm_engine.teaching import cells
from lstm_engine.teaching import explain as ex
from lstm_engine.teaching import inspect_cells as ic

TEXT = 'ab "cd" (a (b) c)\nd'
OFFERED = {"lstm": {"h", "c", "i", "f", "g", "o"}, "peephole": {"h", "c", "i", "f", "g", "o"},
           "coupled": {"h", "c", "f", "g", "o"}, "gru": {"h", "r", "z", "n"}}


def model_of(cell, layers=2, seed=0):
    vocab = Vocab.build(TEXT)
    cfg = ModelConfig(len(vocab), 4, 5, layers=layers, dtype="float64", cell=cell)
    return Model(cfg, nb, init_params(cfg, seed)), vocab


@pytest.mark.parametrize("cell", CELLS)
def test_states_offered_are_the_cells_own(cell, tmp_path):
    assert set(cells.kinds(cell)) == OFFERED[cell]
    model, vocab = model_of(cell)
    states = ic.collect_states(model, vocab, TEXT, chunk=7)
    assert set(states) == OFFERED[cell]
    assert all(v.shape == (2, len(TEXT), 5) for v in states.values())
    for kind in cells.ALL_KINDS:
        if kind in OFFERED[cell]:
            ic.inspect(model, vocab, TEXT, str(tmp_path / f"{kind}.html"), unit=1, kind=kind)
        else:
            with pytest.raises(le.UserError, match=f"--state must be one of .* for this {cell} model"):
                ic.inspect(model, vocab, TEXT, str(tmp_path / "x.html"), unit=1, kind=kind)


@pytest.mark.parametrize("cell", CELLS)
def test_states_are_the_model_states_read_in_chunks(cell):
    """Chunk by chunk (the state carried between chunks) equals one Model.forward over the whole text."""
    model, vocab = model_of(cell)
    states = ic.collect_states(model, vocab, TEXT, chunk=6)
    _, state, _ = model.forward(vocab.encode(TEXT).reshape(-1, 1), model.zero_state(1))
    for l in range(2):
        np.testing.assert_allclose(states["h"][l, -1], state[l][0][0], rtol=1e-6, atol=1e-7)
        if cell != "gru":
            np.testing.assert_allclose(states["c"][l, -1], state[l][1][0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cell", ["peephole", "coupled", "gru"])
def test_states_match_autograd_from_the_equations(cell):
    """A one-layer model's gates and states against cell_oracle's torch forward (an independent oracle)."""
    setup = ex.tiny_setup(TEXT, input_size=4, hidden_size=5, seed=1, cell=cell)
    model = Model(setup.cfg, nb, setup.params)
    states = ic.collect_states(model, setup.vocab, TEXT[:-1], chunk=5)     # (1,N,H) float32 each
    kept, _, _ = torch_cell_reference(setup)
    for t, k in enumerate(kept):
        for g in BLOCKS[cell]:
            np.testing.assert_allclose(states[g][0, t], k["act"][g].detach().numpy()[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(states["h"][0, t], k["h"].detach().numpy()[0], rtol=1e-6, atol=1e-7)
        if cell != "gru":
            np.testing.assert_allclose(states["c"][0, t], k["c"].detach().numpy()[0], rtol=1e-6, atol=1e-7)


def test_the_gru_page_colours_by_n_and_r(tmp_path):
    model, vocab = model_of("gru", layers=1)
    out = tmp_path / "n.html"
    ic.inspect(model, vocab, TEXT, str(out), unit=2, kind="n")
    page = out.read_text(encoding="utf-8")
    assert page.count('title="n=') == len(TEXT) and "layer 0 unit 2 (n)" in page
    res = ic.inspect(model, vocab, TEXT, str(tmp_path / "r.html"), kind="r", rank="brackets", top=2)
    assert len(res["ranking"]) == 2
