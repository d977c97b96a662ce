"""The PyTorch peer for the benchmark: the same model in nn.Embedding + nn.LSTM (nn.GRU) + nn.Linear.

On the CPU it runs PyTorch's own LSTM kernels; on a GPU, cuDNN, with TF32 switched off so that
both sides compute in float32.  It starts from the engine's initial weights (so its loss can be
checked against the NumPy reference) and trains with F.cross_entropy, clip_grad_norm_ and
torch.optim.Adam with the engine's settings.  torch is optional: without it the row says so.

Names:  torch       the peer on the device(s) the other requested backends use
                    (CPU for numpy/numba, CUDA for GPU backends; alone: CUDA when available, else CPU)
        torch-cpu   the CPU peer          torch-cuda   the cuDNN peer

Dimension legend: T time, B batch, E embedding, H hidden, L layers, V vocab.
Weight mapping (export's: storage.interop.to_state_dict) from the engine's fused W{l} (H+I, 4H) over [h, x],
gate order i,f,g,o (PyTorch's):
    weight_hh_l{l} (4H,H) = W[:H].T     weight_ih_l{l} (4H,I) = W[H:].T
    bias_ih_l{l} = b{l}, bias_hh_l{l} = 0 and frozen (so clipping sees each bias once)
GRU (cell "gru"): W{l} (H+I, 3H) gate blocks r,z,n (nn.GRU's order), biases bx{l}, bh{l} (3H,):
    weight_hh_l{l} (3H,H) = W[:H].T     weight_ih_l{l} (3H,I) = W[H:].T
    bias_ih_l{l} = bx{l}, bias_hh_l{l} = bh{l} (both trained: the GRU's n gate sees b_hn inside r * (...))
peephole and coupled: PyTorch has neither, so the peer refuses them (the row says so).
"""
from __future__ import annotations

import importlib.util

from ..core.generation import MAX_CHUNK
from ..core.model import init_params
from ..core.optim import AdamConfig
from ..errors import UserError
from ..storage.interop import to_state_dict

NAMES = ("torch", "torch-cpu", "torch-cuda")


def _cuda_ok():
    import torch
    try:
        return torch.cuda.is_available()
    except Exception:
        return False


def resolve(name, engine_devices, threads):
    """One requested torch name -> [(row name, factory or None, reason, device)]."""
    if importlib.util.find_spec("torch") is None:
        return [(name, None, "torch is not installed (pip install torch); no peer to compare with", None)]
    try:
        import torch  # noqa: F401
    except Exception as e:                               # a broken install is a row, not a crash
        return [(name, None, f"torch failed to import: {type(e).__name__}: {e}", None)]
    if name == "torch":
        devices = []
        if "cpu" in engine_devices:
            devices.append("cpu")
        if "gpu" in engine_devices and _cuda_ok():
            devices.append("cuda")
        if not devices:
            devices = ["cuda" if _cuda_ok() else "cpu"]
    else:
        devices = [name.split("-")[1]]
    out = []
    for dev in devices:
        row_name = f"torch-{dev}"
        if dev == "cuda" and not _cuda_ok():
            out.append((row_name, None, "torch sees no CUDA device", "gpu"))
            continue
        out.append((row_name, lambda cfg, batch, dev=dev: TorchRunner(dev, cfg, batch, threads),
                    "", "gpu" if dev == "cuda" else "cpu"))
    return out


class TorchRunner:
    """train_step / forward / sample / check / sync, mirroring bench.EngineRunner."""

    def __init__(self, dev, cfg, batch, threads=None):
        if cfg.cell not in ("lstm", "gru"):
            raise UserError(f"PyTorch has no {cfg.cell} cell: the engine's {cfg.cell} is compared with its own lstm")
        import torch
        from torch import nn
        self.torch, self.cfg = torch, cfg
        self.device = "gpu" if dev == "cuda" else "cpu"
        self.dev = torch.device(dev)
        if dev == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        if threads:
            torch.set_num_threads(threads)
        V, E, H, L = cfg.V, cfg.E, cfg.H, cfg.L
        self.emb = nn.Embedding(V, E).to(self.dev)
        self.lstm = (nn.GRU if cfg.cell == "gru" else nn.LSTM)(E, H, L).to(self.dev)   # named lstm for both
        self.lin = nn.Linear(H, V).to(self.dev)
        self._load(init_params(cfg.model_config(), seed=0))
        self.params = [p for p in (*self.emb.parameters(), *self.lstm.parameters(), *self.lin.parameters())
                       if p.requires_grad]
        a = AdamConfig()
        self.clip = a.grad_clip
        self.opt = torch.optim.Adam(self.params, lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps)
        self.x = torch.as_tensor(batch[0], device=self.dev)          # (T,B) int64
        self.y = torch.as_tensor(batch[1], device=self.dev).reshape(-1)   # (N,)
        self.zero = self._zero_state(cfg.B)
        self.state = self._zero_state(cfg.B)
        self.sample_state, self.token = self._zero_state(1), 0
        self.gen = torch.Generator(device=self.dev).manual_seed(0)

    def _zero_state(self, B):
        z = self.torch.zeros(self.cfg.L, B, self.cfg.H, device=self.dev)   # (L,B,H)
        return z if self.cfg.cell == "gru" else (z, z.clone())

    def _detach(self, state):
        return state.detach() if self.cfg.cell == "gru" else tuple(s.detach() for s in state)

    def _load(self, P):
        """The engine's weights through `export`'s own mapping (storage.interop.to_state_dict)."""
        t, cell = self.torch, self.cfg.cell
        sd = to_state_dict(P, self.cfg.L, cell)                             # name -> array, torch layouts
        with t.no_grad():
            self.emb.weight.copy_(t.from_numpy(sd["embedding.weight"]))    # (V,E)
            for name, p in self.lstm.named_parameters():
                p.copy_(t.from_numpy(sd[f"{cell}.{name}"]))                 # (G,I), (G,H), (G,)
                if cell == "lstm" and name.startswith("bias_hh"):
                    p.requires_grad_(False)                                 # zeros: clipping sees each bias once
            self.lin.weight.copy_(t.from_numpy(sd["decoder.weight"]))      # (V,H)
            self.lin.bias.copy_(t.from_numpy(sd["decoder.bias"]))          # (V,)
        self.lstm.flatten_parameters()

    def _logits(self, x, state):
        out, state = self.lstm(self.emb(x), state)                          # (T,B,H)
        return self.lin(out.reshape(-1, self.cfg.H)), state                 # (N,V)

    def sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def train_step(self):
        F = self.torch.nn.functional
        self.opt.zero_grad(set_to_none=True)
        logits, state = self._logits(self.x, self.state)
        loss = F.cross_entropy(logits, self.y)
        loss.backward()
        norm = self.torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.state = self._detach(state)
        return loss, norm

    def forward(self):
        with self.torch.inference_mode():
            logits, _ = self._logits(self.x, self.zero)
            return self.torch.nn.functional.cross_entropy(logits, self.y)

    def _filtered_draw(self, logits, top_k, top_p):
        """One id from logits (V,) after top-k, then top-p, as the reference filters (the sorted
        prefix whose mass reaches top_p), drawn by torch.multinomial."""
        t = self.torch
        if 0 < top_k < logits.shape[0]:
            vals, idx = t.topk(logits, top_k)                                # (k,) largest first
        else:
            vals, idx = t.sort(logits, descending=True, stable=True)         # (V,)
        p = t.softmax(vals, -1)
        if top_p < 1.0:
            keep = int(t.searchsorted(t.cumsum(p, 0), top_p)) + 1
            p, idx = p[:keep], idx[:keep]
        return idx[t.multinomial(p, 1, generator=self.gen)]

    def sample(self, n=MAX_CHUNK, greedy=False, state=None, token=None, top_k=0, top_p=1.0):
        """Batch-1 loop of nn.LSTM (nn.GRU) steps, softmax + torch.multinomial per character
        (top_k, top_p: the kept set first, _filtered_draw)."""
        t = self.torch
        with t.inference_mode():
            st = self.sample_state if state is None else state
            tok = t.tensor([[self.token if token is None else token]], device=self.dev)   # (1,1)
            ids = []
            for _ in range(n):
                out, st = self.lstm(self.emb(tok), st)                       # (1,1,H)
                logits = self.lin(out[0, 0])                                 # (V,)
                if greedy:
                    tok = logits.argmax().view(1, 1)
                elif top_k or top_p < 1.0:
                    tok = self._filtered_draw(logits, top_k, top_p).view(1, 1)
                else:
                    tok = t.multinomial(t.softmax(logits, -1), 1, generator=self.gen).view(1, 1)
                ids.append(tok)
            ids = t.cat(ids).reshape(-1).cpu().numpy()                        # (n,)
        if state is None:
            self.sample_state, self.token = st, int(ids[-1])
        return ids

    def check(self, n_greedy=16):
        loss = float(self.forward())
        greedy = [int(i) for i in self.sample(n_greedy, True, self._zero_state(1), 0)]
        self.state = self._zero_state(self.cfg.B)
        train_loss, norm = self.train_step()
        return {"loss": loss, "greedy": greedy, "train_loss": train_loss.item(), "grad_norm": norm.item(),
                "loss_after_step": float(self.forward())}
