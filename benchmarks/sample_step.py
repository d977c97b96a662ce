"""Micro-benchmark of generate alone; options as micro.py:

    python benchmarks/sample_step.py --configs seed --seconds 1
"""
import sys

from micro import main

if __name__ == "__main__":
    main(["--kernels", "generate", *sys.argv[1:]])
