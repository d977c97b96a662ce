"""A numba training step of each cell with the time loops split by batch rows against split by hidden units.

    python benchmarks/cell_splits.py [CONFIG] [CELLS] [REPS]      (default: medium lstm,peephole,coupled,gru 3)

CONFIG as `lstm-engine bench --configs` takes it (one).  A float32 Model of each cell at the config's
E H L B T V, no dropout, on the numba backend with numba.get_num_threads() threads; one forward_backward
per timing, after a warm-up of each plan (the compile), the two plans taking turns, best of REPS.  The
plan is forced through numba_backend.COLUMNS_MIN_MACS (rows: never the unit split; units: from any
size, where H >= threads).  Prints seconds per step and chars/s for each cell and plan.  This is what
the unit split of the peephole and coupled cells was chosen on; run it on an idle machine.
"""
import sys
import time

import numba
import numpy as np

from lstm_engine.backends import numba_backend as nb
from lstm_engine.bench.configs import parse_configs
from lstm_engine.core.model import Model, ModelConfig

PLANS = {"rows": 1 << 62, "units": 0}          # COLUMNS_MIN_MACS forcing each plan


def step_seconds(model, tokens, targets, state):
    t0 = time.perf_counter()
    model.forward_backward(tokens, targets, state)
    return time.perf_counter() - t0


def main(config="medium", cells="lstm,peephole,coupled,gru", reps=3):
    c = parse_configs(config)[0]
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, c.V, (c.T, c.B))
    targets = rng.integers(0, c.V, (c.T, c.B))
    print(f"E{c.E} H{c.H} L{c.L} B{c.B} T{c.T} V{c.V}, float32, {numba.get_num_threads()} threads, best of {reps}")
    for cell in cells.split(","):
        model = Model(ModelConfig(c.V, c.E, c.H, c.L, 0.0, "float32", cell), nb, seed=1)
        state = model.zero_state(c.B)
        best = {p: np.inf for p in PLANS}
        for k in range(reps + 1):                                   # k = 0: the warm-up (compile)
            for plan, columns in PLANS.items():
                nb.COLUMNS_MIN_MACS = columns
                s = step_seconds(model, tokens, targets, state)
                best[plan] = min(best[plan], s) if k else best[plan]
        print(f"{cell:9s} " + "  ".join(f"{p} {best[p]:.3f} s ({c.B * c.T / best[p]:,.0f} chars/s)" for p in PLANS)
              + f"  rows/units {best['rows'] / best['units']:.2f}")


if __name__ == "__main__":
    main(*sys.argv[1:3], *(int(a) for a in sys.argv[3:4]))
