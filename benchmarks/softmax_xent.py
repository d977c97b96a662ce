"""Micro-benchmark of softmax_xent alone; options as micro.py:

    python benchmarks/softmax_xent.py --configs seed --seconds 1
"""
import sys

from micro import main

if __name__ == "__main__":
    main(["--kernels", "softmax_xent", *sys.argv[1:]])
