"""Numba CPU kernels (installed as lstm_engine.kernels.numba); numba_backend.py chooses between them."""
from ...core.environment import apply_numba_isa

apply_numba_isa()    # LSTM_ENGINE_NUMBA_ISA: numba's target, fixed before numba is imported
