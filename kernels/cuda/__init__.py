"""CUDA C++ sources of the cupy backend, compiled once by cupy_kernels.py (RawModule)."""
