"""Corpus -> vocabulary -> token ids -> training windows.

Dimension legend: T time steps per window, B parallel streams (b of them read by this rank), V vocabulary size.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..corpora.registry import load_text
from ..corpora.text import VOCAB_LIMIT
from ..errors import UserError

UNK = "<unk>"


def load_corpus(name_or_path="python-docs", encoding="utf-8"):
    """Text of a corpus given by name (built in, cached or downloaded) or file path;
    see lstm_engine.corpora.registry.load_text for the resolution order."""
    return load_text(name_or_path, encoding)


def unigram_entropy(text):
    """Entropy of the character distribution of `text` in nats/char."""
    counts = np.array(list(Counter(text).values()), np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


@dataclass
class Vocab:
    """Unicode code points sorted by frequency (ties by code point); `<unk>` last if present."""
    symbols: list

    @classmethod
    def build(cls, text, max_vocab=0):
        counts = Counter(text)
        if not max_vocab and len(counts) > VOCAB_LIMIT:
            raise UserError(f"the corpus has {len(counts):,} distinct symbols (more than {VOCAB_LIMIT:,}); pass "
                            f"--max-vocab N (e.g. --max-vocab 10000) to keep the N most frequent, the rest as {UNK}")
        ordered = sorted(counts, key=lambda ch: (-counts[ch], ord(ch)))
        if max_vocab and len(ordered) > max_vocab:
            if max_vocab < 2:
                raise UserError("--max-vocab must be at least 2 (one symbol plus <unk>)")
            ordered = ordered[:max_vocab - 1] + [UNK]
        return cls(ordered)

    def __post_init__(self):
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.unk = self.index.get(UNK)

    def __len__(self):
        return len(self.symbols)

    def encode(self, text, strict=False):
        """text -> ids (N,) int32; unknown characters map to <unk> (or raise if strict/no <unk>)."""
        idx = self.index
        if self.unk is not None and not strict:
            return np.fromiter((idx.get(ch, self.unk) for ch in text), np.int32, len(text))
        missing = sorted({ch for ch in text if ch not in idx})
        if missing:
            shown = "".join(missing[:10])
            raise UserError(f"{len(missing)} character(s) are not in the model's vocabulary: {shown!r}; "
                            f"remove them from the text or train on a corpus that has them")
        return np.fromiter((idx[ch] for ch in text), np.int32, len(text))

    def decode(self, ids):
        return "".join(self.symbols[int(i)] for i in ids)


def split(ids, val_fraction=0.1):
    """Contiguous train/val split: the first (1-f) of the text trains, the rest validates."""
    n_val = int(round(len(ids) * val_fraction))
    if val_fraction > 0 and n_val < 2:
        n_val = min(2, len(ids) // 2)
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:]


class Batcher:
    """B parallel contiguous streams cut into windows of T (truncated BPTT).

    Stream b reads ids[b*S : (b+1)*S + 1] where S = (N-1)//B, so that every target is the
    real next character, never a wrapped one.  Window k of stream b is inputs
    ids[b*S + k*T : b*S + (k+1)*T] and targets shifted by one.  After the last whole window
    the epoch ends and the position (and the carried hidden state) start again from zero.
    streams: the slice of the B streams this process reads (a rank of a data-parallel group);
    they are the streams one process would read, whatever the number of ranks.
    """

    def __init__(self, ids, B, T, streams=None):
        self.ids, self.B, self.T = ids, B, T
        self.streams = streams if streams is not None else slice(0, B)
        self.S = (len(ids) - 1) // B                       # characters per stream
        self.windows = self.S // T                         # windows per epoch
        if self.windows < 1:
            raise UserError(f"the training text ({len(ids)} chars) is shorter than one batch window "
                            f"(batch {B} x seq-len {T} + 1); use a longer corpus or smaller --batch-size/--seq-len")
        starts = np.arange(B)[self.streams] * self.S       # (b,) the streams read here (b = B in one process)
        # (windows, T, b) time-major views of inputs and targets
        offs = starts[None, None, :] + np.arange(self.windows * T).reshape(self.windows, T)[:, :, None]
        self.inputs = ids[offs]                            # (windows, T, b)
        self.targets = ids[offs + 1]                       # (windows, T, b)

    def window(self, k):
        """-> inputs (T,b) int32, targets (T,b) int32 of window k (0 <= k < windows)."""
        return self.inputs[k], self.targets[k]
