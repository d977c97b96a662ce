"""The char-rnn quality recipe in PyTorch (nn.LSTM or nn.GRU), the peer of docs/quality.md's engine rows.

The same vocabulary, contiguous split, batch streams and TBPTT windows as `lstm-engine train` (the engine's
own Vocab, split and Batcher), Adam with global-norm clipping, state carried across windows and reset at an
epoch's end; val scored as one stream over the whole val text from a zero state, in chunks of 256.

    python benchmarks/quality_torch.py ../shared/corpora/tinyshakespeare.txt --cell gru --seed 0

Dimension legend: T window, B batch, E embedding, H hidden, V vocabulary.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

from lstm_engine.core.data import Batcher, Vocab, split


class CharModel(nn.Module):
    def __init__(self, cell, V, E, H, L):
        super().__init__()
        self.embedding = nn.Embedding(V, E)
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(E, H, L)
        self.decoder = nn.Linear(H, V)
        if cell == "lstm":
            for name, p in self.rnn.named_parameters():       # forget gate starts open, as the engine's
                if name.startswith("bias_ih"):
                    with torch.no_grad():
                        p[H:2 * H] = 1.0
                elif name.startswith("bias_hh"):
                    with torch.no_grad():
                        p[H:2 * H] = 0.0

    def forward(self, x, state):                               # x (T,B) -> logits (T,B,V)
        out, state = self.rnn(self.embedding(x), state)
        return self.decoder(out), state


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def evaluate(model, ids, chunk=256):
    """Mean nats/char over ids as one stream from a zero state."""
    model.eval()
    total, state, n = 0.0, None, len(ids) - 1
    with torch.inference_mode():
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            x = torch.from_numpy(ids[s:e].astype(np.int64)).view(-1, 1)          # (T,1)
            y = torch.from_numpy(ids[s + 1:e + 1].astype(np.int64)).view(-1)     # (T,)
            logits, state = model(x, state)
            total += nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y, reduction="sum").item()
    model.train()
    return total / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--cell", choices=("lstm", "gru"), default="gru")
    ap.add_argument("--embed-size", type=int, default=64)
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--grad-clip", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    with open(a.corpus, encoding="utf-8") as f:
        text = f.read()
    vocab = Vocab.build(text)
    train_ids, val_ids = split(np.asarray(vocab.encode(text), np.int64))
    batcher = Batcher(train_ids, a.batch_size, a.seq_len)
    model = CharModel(a.cell, len(vocab), a.embed_size, a.hidden_size, a.layers)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    state, t0 = None, time.perf_counter()
    for step in range(a.steps):
        k = step % batcher.windows
        if k == 0:
            state = None                                       # a new epoch starts from zero state
        x, y = (torch.from_numpy(v.astype(np.int64)) for v in batcher.window(k))   # (T,B) each
        logits, state = model(x, state)
        loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        state = detach(state)
        if (step + 1) % 500 == 0:
            print(f"step {step + 1}/{a.steps} loss {loss.item():.4f}  {time.perf_counter() - t0:.0f}s", flush=True)
    val = evaluate(model, val_ids)
    print(f"torch {torch.__version__} nn.{'GRU' if a.cell == 'gru' else 'LSTM'} seed {a.seed}: "
          f"val {val:.4f} nats/char ({val / math.log(2):.3f} bits/char)")


if __name__ == "__main__":
    main()
