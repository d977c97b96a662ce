"""Micro-benchmark of lstm_forward alone; options as micro.py:

    python benchmarks/gate_forward.py --configs seed --seconds 1
"""
import sys

from micro import main

if __name__ == "__main__":
    main(["--kernels", "lstm_forward", *sys.argv[1:]])
