"""Micro-benchmark of lstm_backward alone; options as micro.py:

    python benchmarks/gate_backward.py --configs seed --seconds 1
"""
import sys

from micro import main

if __name__ == "__main__":
    main(["--kernels", "lstm_backward", *sys.argv[1:]])
