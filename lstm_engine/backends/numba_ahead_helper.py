"""The helper process of numba_ahead.start: `python -m lstm_engine.backends.numba_ahead_helper SPEC`
compiles, into numba's disk cache, what the parent process needs after the part it compiles
itself: a training step's backward, loss and Adam and its evaluation's chunks (run_step), or
the sampler's team (run_sample).  Its outputs are thrown away.

Dimension legend: T window, B batch, V vocabulary.
"""
from __future__ import annotations

import json
import signal
import sys

import numpy as np

# kernels module -> the forward kernels the helper runs as no-ops in the training step, as the
# parent compiles them meanwhile (entry kernels only: a name that jitted code calls would be a
# Python object to the compiler)
FORWARD_KERNELS = {
    "lstm_layer": ("lstm_forward_kernel", "embed_lstm_forward_kernel"),
    "cell_layers": ("cell_forward_kernel", "embed_cell_forward_kernel"),
    "gru_layer": ("gru_forward_kernel", "embed_gru_forward_kernel"),
    "output_layer": ("linear_forward_kernel", "softmax_xent_kernel"),
}


class _Skipped:
    """A forward kernel that, in the training step, only records its argument types and returns
    0.0 (the loss's kernel returns the loss); during the evaluation it runs (compiles) for argument
    types the step did not have."""

    evaluating = False

    def __init__(self, kernel):
        self.kernel, self.seen = kernel, set()

    def __call__(self, *args):
        sig = tuple(self.kernel.typeof_pyval(a) for a in args)
        if _Skipped.evaluating and sig not in self.seen:
            return self.kernel(*args)
        self.seen.add(sig)
        return 0.0


def import_kernels():
    """Import every module of kernels/numba, so that none binds a replaced kernel by name later."""
    import importlib
    import pkgutil

    from ..kernels import numba as package
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def skip_forward_kernels():
    """Replace the forward kernels in their modules by _Skipped ones (in the helper only), every
    kernels module imported first."""
    import importlib
    import_kernels()
    for module, names in FORWARD_KERNELS.items():
        mod = importlib.import_module(f"lstm_engine.kernels.numba.{module}")
        for name in names:
            setattr(mod, name, _Skipped(getattr(mod, name)))


def run_step(spec):
    """One training step (forward, BPTT, clip, Adam) of spec's model on random tokens, then one
    evaluation chunk of each of spec's lengths, on the numba backend."""
    from ..core.model import Model, ModelConfig
    from ..core.optim import Adam, AdamConfig
    from . import numba_backend as nb
    cfg = ModelConfig(**spec["model"])
    model = Model(cfg, nb, seed=0)
    rng = np.random.default_rng(0)
    B, T, V = spec["batch"], spec["seq_len"], cfg.vocab_size
    tokens, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))     # (T,B) each
    masks = model.dropout_masks(T, B, rng)                                        # None without dropout
    with np.errstate(all="ignore"):              # the skipped kernels' outputs are uninitialised memory
        _, grads, _ = model.forward_backward(tokens, targets, model.zero_state(B), masks)
        opt = Adam(model.params, nb, AdamConfig())
        _, scale = opt.clip_scale(grads)
        opt.update(model.params, grads, 1e-3, scale)
        _Skipped.evaluating = True
        for n in spec["eval"]:
            ids = rng.integers(0, V, (n, 1))                                      # (n,1)
            model.loss(ids, ids, model.zero_state(1))


def run_sample(spec):
    """One generate call of spec's model (random weights: only types reach the compiler) through
    the team numba_tune_sample would time, never the one-thread kernel this process compiles."""
    from ..core.model import Model, ModelConfig
    from . import numba_backend as nb
    from . import numba_tune, numba_tune_sample
    numba_tune._products[0], numba_tune._sampler[0] = spec["products"], spec["sampler"]
    numba_tune_sample.active = lambda cache, threads, H: True
    numba_tune_sample.choose = lambda shape, threads, new_team, *args, **kw: new_team()
    cfg = ModelConfig(**spec["model"])
    model = Model(cfg, nb, seed=0)
    cache = {"chars": spec["sample"]}
    nb.generate(model.params, model.zero_state(1), 0, numba_tune_sample.CALL_CHARS, 1.0, 0, 1.0, False,
                np.random.default_rng(0), cache, cell=cfg.cell)
    if "team" in cache:
        cache["team"][1].close()


def main(argv):
    import numba

    from . import numba_backend
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the group: the parent decides
    spec = json.loads(argv[0])
    numba_backend.is_available()                 # LSTM_ENGINE_NUMBA_ISA, as in the parent
    numba.set_num_threads(spec["threads"])
    if "sample" in spec:
        run_sample(spec)
    else:
        skip_forward_kernels()
        run_step(spec)


if __name__ == "__main__":
    main(sys.argv[1:])
