"""Memory checks before allocation: an estimate in bytes, naming the option that drives it.

An option sized beyond memory must fail with one line before anything is allocated, not with a
MemoryError (or the OOM killer) minutes into a run.  The estimates are deliberately rough (within
a small factor): they only have to tell a size that can never fit from one that may.

Dimension legend: V vocab, E embedding, H hidden, L layers, B batch, T seq-len, N = T*B rows,
G the gate columns of the cell: 4H (lstm, peephole), 3H (coupled, gru).
"""
from __future__ import annotations

import math
import os

from ..errors import UserError
from .model import GATE_BLOCKS, cell_param_shapes


def available_memory():
    """Bytes this process may still allocate: MemAvailable, capped by a cgroup limit; None if unknown."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        try:
            avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            used = int(f.read().strip())
        if limit != "max":
            left = int(limit) - used
            avail = left if avail is None else min(avail, left)
    except (OSError, ValueError):
        pass
    return avail


def human(n):
    """Bytes as a short string (1.5 GB, 300 MB, 12 kB)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}" if n < 1e15 else f"{n:.3g} bytes"
    return f"{int(n)} bytes"


def check_fits_memory(need, what, hint):
    """UserError when `need` bytes exceed the memory available ('what needs about X; Y available; hint')."""
    avail = available_memory()
    if avail is not None and need > avail:
        raise UserError(f"{what} needs about {human(need)} of memory, more than the {human(avail)} available; {hint}")


def model_terms(V, E, H, L, cell="lstm"):
    """Parameter counts of a model of `cell` by the option that sizes them: {option: count}."""
    layers = sum(sum(math.prod(shape) for shape in cell_param_shapes(cell, E if l == 0 else H, H).values())
                 for l in range(L))                                      # W (H+I_l, G), biases, peepholes
    return {"--embed-size": V * E, "--hidden-size": layers, "--max-vocab": H * V + V}


def cached_terms(E, H, L, cell="lstm"):
    """Elements per row (of the N = T*B) of the arrays one window's forward keeps for BPTT: per layer
    its input x (I_l: the embeddings, or the masked output below) and what its cell keeps, hs (H),
    acts (G, the activated gates) and cs (H, c_t: lstm, peephole, coupled) or hn (H, the GRU's
    h-side n sum W_hn h + b_hn, kept apart for r); last the output layer's input (H, the masked top
    hs).  As the numpy and numba caches with dropout (without, x is the hs below; numba on layer
    0's table path keeps no x: this counts the larger)."""
    G = GATE_BLOCKS[cell] * H
    return [(E if l == 0 else H) + H + G + H for l in range(L)] + [H]


def backward_terms(E, H, cell="lstm"):
    """Elements per row of BPTT's scratch, one layer at a time: the pre-activation gradients dz (G;
    the GRU keeps its x- and h-side sums apart: 2G), dx (I <= max(E, H)) and dL/dh from above (H)."""
    G = GATE_BLOCKS[cell] * H
    return (2 * G if cell == "gru" else G) + max(E, H) + H


def training_estimate(V, E, H, L, B, T, itemsize, cell="lstm"):
    """-> (bytes, {driver: bytes}) of training: parameters, gradients and two Adam moments, plus the
    activations of one window: what the forward keeps for BPTT, BPTT's scratch, logits, their
    gradient and the softmax's log-probabilities (3V per row)."""
    params = sum(model_terms(V, E, H, L, cell).values())
    acts = B * T * (sum(cached_terms(E, H, L, cell)) + backward_terms(E, H, cell) + 3 * V)
    parts = {"the model (--hidden-size, --embed-size, --layers, vocabulary)": 4 * params * itemsize,
             "one window's activations (--batch-size x --seq-len)": acts * itemsize}
    return sum(parts.values()), parts


def check_training_memory(V, E, H, L, B, T, dtype, cell="lstm"):
    """UserError naming the options when a training run of `cell` at these sizes cannot fit in memory."""
    need, parts = training_estimate(V, E, H, L, B, T, 8 if dtype == "float64" else 4, cell)
    avail = available_memory()
    if avail is None or need <= avail:
        return
    driver = max(parts, key=parts.get)
    raise UserError(f"training a {cell} E{E} H{H} L{L} on {V} symbols with batch {B} x seq-len {T} ({dtype}) "
                    f"needs about {human(need)} of memory, {human(parts[driver])} of it for {driver}, more "
                    f"than the {human(avail)} available; choose smaller sizes")
