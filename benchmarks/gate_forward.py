"""Micro-benchmark of lstm_forward alone: python benchmarks/gate_forward.py [--configs seed] [--seconds 1] (see micro.py)."""
import sys

from micro import main

if __name__ == "__main__":
    main(["--kernels", "lstm_forward", *sys.argv[1:]])
