"""What `bench` runs on: the named configs, a config's shape and FLOP model, and the option lists.

Dimension legend: V vocab (65 unless a config says V), E embedding, H hidden, L layers, B batch, T time steps,
I_l input size of layer l (E for layer 0, H above), G gate columns of a layer (4H: lstm, peephole; 3H: coupled, gru).
The FLOP model is harness.py's (its module docstring).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .. import backends as backends_mod
from . import torch_peer as bench_torch
from ..core.generation import MAX_CHUNK
from ..core.model import CELLS, GATE_BLOCKS, ModelConfig
from ..errors import UserError

VOCAB = 65
WHATS = ("train", "forward", "sample")
MEASURES = WHATS + ("memory",)   # memory: peak resident memory of a training run (bench/memory.py), not timed
SAMPLE_CHUNK = MAX_CHUNK   # characters per generate() call, as generation.generate_text makes them in a long text
DEFAULT_BACKENDS = "numpy,numba,cupy,torch"
DEFAULT_CONFIGS = "tiny,seed,karpathy"
MAX_VOCAB = 0x110000 + 1   # every Unicode code point and <unk>


@dataclass(frozen=True)
class BenchConfig:
    name: str
    E: int
    H: int
    L: int
    B: int
    T: int
    V: int = VOCAB
    cell: str = "lstm"

    @property
    def shape(self):
        return f"E{self.E},H{self.H},L{self.L},B{self.B},T{self.T}" + (f",V{self.V}" if self.V != VOCAB else "")

    def model_config(self):
        return ModelConfig(self.V, self.E, self.H, self.L, cell=self.cell)

    def forward_flops_per_char(self):
        """sum_l 2*(I_l + H)*G + 2*H*V (see the module docstring)."""
        E, H, L, V = self.E, self.H, self.L, self.V
        G = GATE_BLOCKS[self.cell] * H
        return sum(2 * ((E if l == 0 else H) + H) * G for l in range(L)) + 2 * H * V

    def weight_bytes_per_char(self, itemsize=4, scale_bytes=0):
        """Bytes of weights a batch-1 character reads at the least (harness.py's module docstring):
        every W_h, every W_x above layer 0, one row of layer 0's Emb @ W_x table and Wy, each weight
        itemsize bytes, plus scale_bytes per column of each matrix (int8 codes' float32 scales)."""
        H, L, V = self.H, self.L, self.V
        G = GATE_BLOCKS[self.cell] * H
        weights = L * H * G + (L - 1) * H * G + G + H * V
        columns = L * G + (L - 1) * G + V
        return itemsize * weights + scale_bytes * columns

    def flops_per_char(self, what):
        return self.forward_flops_per_char() * (3 if what == "train" else 1)

    def chars_per_call(self, what):
        return SAMPLE_CHUNK if what == "sample" else self.B * self.T


CONFIGS = {c.name: c for c in (
    BenchConfig("tiny", 16, 32, 1, 1, 25),
    BenchConfig("seed", 128, 128, 2, 32, 50),
    BenchConfig("karpathy", 65, 128, 2, 50, 50),
    BenchConfig("medium", 128, 512, 2, 64, 100),
    BenchConfig("large", 256, 1024, 3, 64, 100),
)}


# ----------------------------------------------------------------------------
# Parsing the option lists
# ----------------------------------------------------------------------------

def _split(spec):
    return [t.strip() for t in spec.split(",") if t.strip()] if isinstance(spec, str) else list(spec)


def _vocab_token(tok):
    """'V6746' -> 6746, None when tok is not a vocabulary size (the letter is required)."""
    m = re.fullmatch(r"V(\d+)", tok, re.IGNORECASE)
    if not m:
        return None
    V = int(m.group(1))
    if not 2 <= V <= MAX_VOCAB:
        raise UserError(f"vocabulary size {tok!r} must be between 2 and {MAX_VOCAB}")
    return V


def parse_configs(spec):
    """'tiny,seed' or '64,128,2,32,50' (E,H,L,B,T; letters allowed: E64,H128,L2,B32,T50) -> [BenchConfig].

    A lettered vocabulary size after a config sets its V: 'E128,H256,L2,B32,T50,V6746', 'seed,V6746'."""
    tokens, out, k = _split(spec), [], 0
    while k < len(tokens):
        tok = tokens[k]
        if tok in CONFIGS:
            c, k = CONFIGS[tok], k + 1
        else:
            dims = []
            for letter, t in zip("EHLBT", tokens[k:k + 5]):
                m = re.fullmatch(rf"{letter}?(\d+)", t, re.IGNORECASE)
                if not m:
                    break
                if int(m.group(1)) < 1:
                    raise UserError(f"config {','.join(tokens[k:k + 5])!r}: {letter} must be a positive whole "
                                    f"number (got {t!r}); give E,H,L,B,T such as 64,128,2,32,50")
                dims.append(int(m.group(1)))
            if 0 < len(dims) < 5:
                raise UserError(f"config {','.join(tokens[k:k + len(dims) + 1])!r} is not a whole shape: give all "
                                f"five numbers E,H,L,B,T such as 64,128,2,32,50 (letters allowed: "
                                f"E64,H128,L2,B32,T50)")
            if len(dims) < 5:
                raise UserError(f"unknown config {tok!r}; choose from {', '.join(CONFIGS)} "
                                f"or give five positive numbers E,H,L,B,T such as 64,128,2,32,50 "
                                f"(then V6746 for a vocabulary other than {VOCAB})")
            c, k = BenchConfig("", *dims), k + 5
            c = replace(c, name=c.shape)
        V = _vocab_token(tokens[k]) if k < len(tokens) else None
        if V is not None:
            k += 1
            c = replace(c, V=V)
            c = replace(c, name=c.shape if c.name not in CONFIGS else f"{c.name}-V{V}")
        out.append(c)
    if not out:
        raise UserError(f"--configs is empty; choose from {', '.join(CONFIGS)} or E,H,L,B,T")
    return list(dict.fromkeys(out))


def parse_cells(spec):
    """'lstm,gru' -> ['lstm', 'gru']."""
    cells = list(dict.fromkeys(_split(spec)))
    for c in cells:
        if c not in CELLS:
            raise UserError(f"unknown cell {c!r}; choose from {', '.join(CELLS)}")
    if not cells:
        raise UserError(f"--cell is empty; choose from {', '.join(CELLS)}")
    return cells


def parse_backends(spec):
    names = list(dict.fromkeys(_split(spec)))
    known = list(backends_mod.BACKENDS) + list(bench_torch.NAMES)
    for n in names:
        if n not in known:
            raise UserError(f"unknown backend {n!r}; choose from {', '.join(known)}")
    if not names:
        raise UserError(f"--backends is empty; choose from {', '.join(known)}")
    return names


def parse_whats(spec):
    whats = list(dict.fromkeys(_split(spec)))
    for w in whats:
        if w not in MEASURES:
            raise UserError(f"unknown measurement {w!r}; choose from {', '.join(MEASURES)}")
    if not whats:
        raise UserError(f"--what is empty; choose from {', '.join(MEASURES)}")
    return whats
