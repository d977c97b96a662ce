"""Micro-benchmark of softmax_xent alone: python benchmarks/softmax_xent.py [--configs seed] [--seconds 1] (see micro.py)."""
import sys

from micro import main

if __name__ == "__main__":
    main(["--kernels", "softmax_xent", *sys.argv[1:]])
