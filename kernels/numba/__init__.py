"""Numba CPU kernels (installed as lstm_engine.kernels.numba); numba_backend.py chooses between them."""
