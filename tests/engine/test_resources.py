"""The training memory estimate (core/resources.py) follows the cell: its parameter and cached-activation
terms against the arrays a real forward_backward of each cell keeps, on the numpy and numba backends.

Dimension legend: V vocab, E embedding, H hidden, L layers, B batch, T seq-len.
"""
import numpy as np
import pytest

from lstm_engine.backends import get_backend
from lstm_engine.core import resources
from lstm_engine.core.model import CELLS, Model, ModelConfig
from lstm_engine.core.optim import Adam, AdamConfig

V_TABLE, V_GATHER = 7, 90            # V <= T*B: numba's layer 0 reads the table Emb @ W_x; V > T*B: gathers
E, H, L, B, T = 6, 10, 3, 4, 5
BACKENDS = ["numpy", "numba"]


def root(a):
    """The array that owns a's memory (views and reshapes share their owner's)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def float_arrays(obj, found):
    """Every floating ndarray reachable from obj (tuples, lists, dicts, objects with __slots__) into found."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f":
            found.append(obj)
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            float_arrays(o, found)
    elif isinstance(obj, dict):
        for o in obj.values():
            float_arrays(o, found)
    elif hasattr(obj, "__slots__"):
        for name in obj.__slots__:
            float_arrays(getattr(obj, name, None), found)
    return found


def kept_bytes(keep, exclude):
    """Bytes of the distinct buffers of the floating arrays in `keep`, leaving out those of `exclude`."""
    skip = {id(root(a)) for a in float_arrays(exclude, [])}
    owners = {id(r): r for r in map(root, float_arrays(keep, [])) if id(r) not in skip}
    return sum(r.nbytes for r in owners.values())


def one_window(backend, cell, V, dtype, dropout):
    """A model of `cell` after Model.forward on one window -> (model, state, masks, tokens, caches and x2)."""
    be = get_backend(backend)
    model = Model(ModelConfig(V, E, H, L, dropout, dtype, cell), be, seed=3)
    rng = np.random.default_rng(5)
    tokens = be.asarray(rng.integers(0, V, (T, B)))
    state = model.zero_state(B)
    masks = model.dropout_masks(T, B, rng)
    _, _, kept = model.forward(tokens, state, masks)
    return model, state, masks, tokens, kept


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_cached_activations_are_what_the_forward_keeps(cell, backend, dtype):
    """With dropout every layer's input is an array of its own: the estimate is exact on the numpy backend
    and numba's gathered layer 0, and exceeds numba's table path by the layer-0 input it does not keep (B*T*E)."""
    item = np.dtype(dtype).itemsize
    want = B * T * sum(resources.cached_terms(E, H, L, cell)) * item
    for V in (V_TABLE, V_GATHER):
        model, state, masks, tokens, kept = one_window(backend, cell, V, dtype, dropout=0.3)
        got = kept_bytes(kept, [model.params, state])
        table = backend == "numba" and V <= T * B
        assert got == want - (B * T * E * item if table else 0), (cell, backend, V, got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_parameters_gradients_and_adam_moments_are_four_times_the_model_terms(cell, backend):
    """model_terms counts each cell's own parameters (3 or 4 gate blocks, peepholes, the GRU's two biases):
    the parameters, their gradients and Adam's m and v each take exactly that many elements."""
    dtype = "float64"
    model, state, masks, tokens, _ = one_window(backend, cell, V_GATHER, dtype, dropout=0.0)
    count = sum(resources.model_terms(V_GATHER, E, H, L, cell).values())
    _, grads, _ = model.forward_backward(tokens, tokens, state, masks)
    opt = Adam(model.params, model.be, AdamConfig(1e-3))
    for what, arrays in (("params", model.params), ("grads", grads), ("m", opt.m), ("v", opt.v)):
        assert sum(a.size for a in arrays.values()) == count, (cell, what)
    need, parts = resources.training_estimate(V_GATHER, E, H, L, B, T, 8, cell)
    assert parts["the model (--hidden-size, --embed-size, --layers, vocabulary)"] == 4 * count * 8


@pytest.mark.parametrize("sizes", [(65, 64, 128, 2, 16, 50), (65, 128, 512, 2, 64, 100), (65, 16, 64, 1, 8, 10)],
                         ids=["seed", "medium", "one-layer"])
def test_the_three_gate_cells_need_less_than_the_lstm(sizes):
    """Three gate blocks instead of four: the GRU and the coupled cell keep less per layer than the lstm
    and have fewer parameters; the peephole keeps what the lstm keeps plus its 3H peepholes per layer."""
    V, E_, H_, L_, B_, T_ = sizes
    total = {c: resources.training_estimate(V, E_, H_, L_, B_, T_, 4, c)[0] for c in CELLS}
    kept = {c: sum(resources.cached_terms(E_, H_, L_, c)) for c in CELLS}
    for c in ("gru", "coupled"):
        assert kept[c] < kept["lstm"], c
        assert total[c] < total["lstm"], c
    assert kept["peephole"] == kept["lstm"]
    assert total["peephole"] == total["lstm"] + 4 * L_ * 3 * H_ * 4
