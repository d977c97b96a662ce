"""Micro-benchmark of adam_update alone; options as micro.py:

    python benchmarks/adam.py --configs seed --seconds 1
"""
import sys

from micro import main

if __name__ == "__main__":
    main(["--kernels", "adam_update", *sys.argv[1:]])
