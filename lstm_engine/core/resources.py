"""Memory checks before allocation: an estimate in bytes, naming the option that drives it.

An option sized beyond memory must fail with one line before anything is allocated, not with a
MemoryError (or the OOM killer) minutes into a run.  The estimates are deliberately rough (within
a small factor): they only have to tell a size that can never fit from one that may.

Dimension legend: V vocab, E embedding, H hidden, L layers, G = 4H, B batch, T seq-len.
"""
from __future__ import annotations

import os

from ..errors import UserError


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


def model_terms(V, E, H, L):
    """Parameter counts of a model by the option that sizes them: {option: count}."""
    lstm = (H + E) * 4 * H + 4 * H + (L - 1) * ((2 * H) * 4 * H + 4 * H)   # W (H+I_l, G) and b (G,) per layer
    return {"--embed-size": V * E, "--hidden-size": lstm, "--max-vocab": H * V + V}


def training_estimate(V, E, H, L, B, T, itemsize):
    """-> (bytes, {driver: bytes}) of training: parameters, gradients and two Adam moments, plus the
    activations of one window that BPTT keeps (inputs, gates, cells per layer; logits and their gradient)."""
    params = sum(model_terms(V, E, H, L).values())
    acts = B * T * (E + 9 * H + (L - 1) * 10 * H + 3 * V)
    parts = {"the model (--hidden-size, --embed-size, --layers, vocabulary)": 4 * params * itemsize,
             "one window's activations (--batch-size x --seq-len)": acts * itemsize}
    return sum(parts.values()), parts


def check_training_memory(V, E, H, L, B, T, dtype):
    """UserError naming the options when a training run of these sizes cannot fit in memory."""
    need, parts = training_estimate(V, E, H, L, B, T, 8 if dtype == "float64" else 4)
    avail = available_memory()
    if avail is None or need <= avail:
        return
    driver = max(parts, key=parts.get)
    raise UserError(f"training E{E} H{H} L{L} on {V} symbols with batch {B} x seq-len {T} ({dtype}) needs about "
                    f"{human(need)} of memory, {human(parts[driver])} of it for {driver}, more than the "
                    f"{human(avail)} available; choose smaller sizes")
