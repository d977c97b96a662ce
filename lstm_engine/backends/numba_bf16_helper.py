"""The helper process of numba_tune_bf16.start_helper: `python -m lstm_engine.backends.numba_bf16_helper NT`
runs the bfloat16 probe layer once on NT numba threads, as the parent would, so its kernels are
compiled into numba's disk cache while the parent compiles the float32 ones.
"""
from __future__ import annotations

import sys


def main(argv):
    import numba

    from . import numba_backend
    numba_backend.is_available()                  # LSTM_ENGINE_NUMBA_ISA, as in the parent
    numba.set_num_threads(int(argv[0]))
    numba_backend._bf16_probe()("bf16")


if __name__ == "__main__":
    main(sys.argv[1:])
