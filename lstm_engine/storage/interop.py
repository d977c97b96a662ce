"""PyTorch interop: lstm-engine checkpoints <-> state dicts of nn.Embedding -> nn.LSTM (or nn.GRU) -> nn.Linear.

Dimension legend: V vocab, E embedding, H hidden, L layers, G = 4H (lstm) or 3H (gru), I_l input size of layer l
(E, then H).

    ours                 PyTorch (module attribute . parameter)      relation
    Emb (V,E)            embedding.weight (V,E)                      equal
    W{l}[H:] (I_l,G)     lstm.weight_ih_l{l} (G,I_l)                 transposed
    W{l}[:H] (H,G)       lstm.weight_hh_l{l} (G,H)                   transposed
    b{l} (G,)            lstm.bias_ih_l{l} + lstm.bias_hh_l{l} (G,)  export: b -> bias_ih, zeros -> bias_hh
    Wy (H,V)             decoder.weight (V,H)                        transposed
    by (V,)              decoder.bias (V,)                           equal

A gru model maps to nn.GRU under the attribute `gru` (gate order r, z, n on both sides):

    W{l}[H:] (I_l,G)     gru.weight_ih_l{l} (G,I_l)                  transposed
    W{l}[:H] (H,G)       gru.weight_hh_l{l} (G,H)                    transposed
    bx{l} (G,)           gru.bias_ih_l{l} (G,)                       equal
    bh{l} (G,)           gru.bias_hh_l{l} (G,)                       equal (r multiplies W_hn h + b_hn: not foldable)

PyTorch has no peephole or coupled cell: their export is refused.
The gate order is the same on both sides (i, f, g, o), so no columns move.  The state dict is
written as safetensors (no torch needed) or, when the file name ends in .pt and torch is
installed, with torch.save; the vocabulary goes beside it as a JSON list (FILE.vocab.json).
"""
from __future__ import annotations

import io
import json
import os
import re

import numpy as np

from . import checkpoint
from .atomic import atomic_write_bytes
from .files import check_output, read_regular
from .schema import vocab_problem
from ..core.data import UNK, Vocab
from ..errors import UserError
from ..core.model import ModelConfig

DTYPES = ("float32", "float64")
TORCH_CELLS = ("lstm", "gru")        # the cells nn.LSTM and nn.GRU hold; the module attribute is the cell's name


# ----------------------------------------------------------------------------
# The mapping (pure array functions, no files)
# ----------------------------------------------------------------------------

def to_state_dict(params, layers, cell="lstm"):
    """Our parameters (name -> ndarray) -> PyTorch state dict (name -> ndarray, torch layouts)."""
    H = params["Wy"].shape[0]
    sd = {"embedding.weight": params["Emb"]}                       # (V,E)
    for l in range(layers if cell == "gru" else 0):
        W = params[f"W{l}"]                                        # (H+I,G)
        sd[f"gru.weight_ih_l{l}"] = W[H:].T                        # (G,I)
        sd[f"gru.weight_hh_l{l}"] = W[:H].T                        # (G,H)
        sd[f"gru.bias_ih_l{l}"] = params[f"bx{l}"]                 # (G,)
        sd[f"gru.bias_hh_l{l}"] = params[f"bh{l}"]                 # (G,)
    for l in range(layers if cell == "lstm" else 0):
        W, b = params[f"W{l}"], params[f"b{l}"]                    # (H+I,G), (G,)
        sd[f"lstm.weight_ih_l{l}"] = W[H:].T                       # (G,I)
        sd[f"lstm.weight_hh_l{l}"] = W[:H].T                       # (G,H)
        sd[f"lstm.bias_ih_l{l}"] = b                               # (G,)
        sd[f"lstm.bias_hh_l{l}"] = np.zeros_like(b)                # (G,) our single bias lives in bias_ih
    sd["decoder.weight"] = params["Wy"].T                          # (V,H)
    sd["decoder.bias"] = params["by"]                              # (V,)
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def fuse_lstm_weight(weight_ih, weight_hh):
    """weight_ih (G,I), weight_hh (G,H) -> our fused W (H+I,G) over [h_{t-1}, x_t].

    Linear, so it also maps the gradients of the two torch weights to our dW."""
    return np.ascontiguousarray(np.concatenate([weight_hh.T, weight_ih.T], axis=0))


def expected_shapes(V, E, H, L, cell="lstm"):
    """State-dict name -> shape for a model of these sizes (the documented names, nothing else)."""
    G = (4 if cell == "lstm" else 3) * H
    shapes = {"embedding.weight": (V, E)}
    for l in range(L):
        shapes[f"{cell}.weight_ih_l{l}"] = (G, E if l == 0 else H)
        shapes[f"{cell}.weight_hh_l{l}"] = (G, H)
        shapes[f"{cell}.bias_ih_l{l}"] = (G,)
        shapes[f"{cell}.bias_hh_l{l}"] = (G,)
    shapes["decoder.weight"] = (V, H)
    shapes["decoder.bias"] = (V,)
    return shapes


def infer_config(sd, where):
    """Sizes from the shapes of a state dict -> ModelConfig (dropout 0, dtype of the tensors; an nn.GRU's
    `gru.*` tensors make a gru model, else an lstm)."""
    cell = "gru" if "gru.weight_hh_l0" in sd and "lstm.weight_hh_l0" not in sd else "lstm"
    for key in ("embedding.weight", f"{cell}.weight_hh_l0"):
        if key not in sd:
            raise UserError(f"{where} has no tensor {key!r}; expected the state dict of "
                            f"nn.Embedding -> nn.LSTM (or nn.GRU) -> nn.Linear named embedding/lstm (gru)/decoder "
                            f"(see docs/pytorch-interop.md)")
        if np.ndim(sd[key]) != 2:
            raise UserError(f"{where}: {key} has shape {tuple(np.shape(sd[key]))}, expected a matrix")
    V, E = sd["embedding.weight"].shape
    G, H = sd[f"{cell}.weight_hh_l0"].shape
    L = 0
    while f"{cell}.weight_ih_l{L}" in sd or f"{cell}.weight_hh_l{L}" in sd:
        L += 1
    dtypes = sorted({str(t.dtype) for t in sd.values()})
    if len(dtypes) != 1 or dtypes[0] not in DTYPES:
        raise UserError(f"{where} holds tensors of dtype {', '.join(dtypes)}; lstm-engine needs all float32 "
                        f"or all float64 - convert in PyTorch first (model.float() or model.double())")
    return ModelConfig(vocab_size=V, embed_size=E, hidden_size=H, layers=L, dropout=0.0, dtype=dtypes[0], cell=cell)


def check_state_dict(sd, cfg, where):
    """Exactly the documented names, each with its shape and only finite values, or a one-line UserError."""
    shapes = expected_shapes(cfg.vocab_size, cfg.embed_size, cfg.hidden_size, cfg.layers, cfg.cell)
    missing = [k for k in shapes if k not in sd]
    if missing:
        raise UserError(f"{where} lacks {len(missing)} tensor(s): {', '.join(missing[:4])}"
                        f"{' ...' if len(missing) > 4 else ''}; export the full module's state_dict()")
    extra = sorted(k for k in sd if k not in shapes)
    if extra:
        raise UserError(f"{where} has unexpected tensor(s): {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}; "
                        f"only a unidirectional nn.LSTM without projections named 'lstm' (or nn.GRU named 'gru') "
                        f"is supported")
    for k, shape in shapes.items():
        if tuple(sd[k].shape) != shape:
            raise UserError(f"{where}: {k} has shape {tuple(sd[k].shape)}, expected {shape} "
                            f"(V={cfg.vocab_size}, E={cfg.embed_size}, H={cfg.hidden_size}, L={cfg.layers})")
        if not np.all(np.isfinite(sd[k])):
            raise UserError(f"{where}: {k} holds non-finite values (NaN or inf)")


def from_state_dict(sd, where="state dict"):
    """PyTorch state dict (name -> ndarray) -> (ModelConfig, our parameters).  Validates first."""
    cfg = infer_config(sd, where)
    check_state_dict(sd, cfg, where)
    params = {"Emb": np.ascontiguousarray(sd["embedding.weight"])}                  # (V,E)
    for l in range(cfg.layers if cfg.cell == "gru" else 0):
        params[f"W{l}"] = fuse_lstm_weight(sd[f"gru.weight_ih_l{l}"], sd[f"gru.weight_hh_l{l}"])    # (H+I,G)
        params[f"bx{l}"] = np.ascontiguousarray(sd[f"gru.bias_ih_l{l}"])                          # (G,)
        params[f"bh{l}"] = np.ascontiguousarray(sd[f"gru.bias_hh_l{l}"])                          # (G,)
    for l in range(cfg.layers if cfg.cell == "lstm" else 0):
        params[f"W{l}"] = fuse_lstm_weight(sd[f"lstm.weight_ih_l{l}"], sd[f"lstm.weight_hh_l{l}"])  # (H+I,G)
        params[f"b{l}"] = np.ascontiguousarray(sd[f"lstm.bias_ih_l{l}"] + sd[f"lstm.bias_hh_l{l}"])  # (G,)
    params["Wy"] = np.ascontiguousarray(sd["decoder.weight"].T)                     # (H,V)
    params["by"] = np.ascontiguousarray(sd["decoder.bias"])                         # (V,)
    return cfg, params


# ----------------------------------------------------------------------------
# Files: state dicts (safetensors or torch .pt) and the vocabulary beside them
# ----------------------------------------------------------------------------

def vocab_path_for(path):
    """FILE with its suffix replaced by .vocab.json (model.safetensors -> model.vocab.json)."""
    return os.path.splitext(path)[0] + ".vocab.json"


def _write(path, data, what):
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise UserError(f"could not write {what} {path!r}: {e.strerror or e}; check that the directory exists "
                        f"and is writable") from None


def _import_torch(why):
    try:
        import torch
    except ImportError:
        raise UserError(f"{why} needs PyTorch, which is not installed; `pip install torch`, "
                        f"or use a .safetensors file instead") from None
    return torch


def write_state_dict(path, sd):
    """name -> ndarray to PATH: torch.save when PATH ends in .pt, safetensors otherwise.  Atomic."""
    if path.endswith(".pt"):
        torch = _import_torch(f"writing {path!r} (a .pt file)")
        buf = io.BytesIO()
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, buf)
        data = buf.getvalue()
    else:
        from safetensors.numpy import save as st_save
        data = st_save(dict(sd), metadata={"format": "pt", "written_by": "lstm-engine export"})
    _write(path, data, "state dict")


TORCH_SAFE_LOAD = (2, 6)     # from 2.6 torch.load(weights_only=True) refuses every pickle that could run code


def torch_version(torch):
    """(major, minor) of an imported torch ('2.6.0+cpu' -> (2, 6)); (0, 0) when unreadable."""
    m = re.match(r"(\d+)\.(\d+)", str(getattr(torch, "__version__", "")))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _read_torch_file(raw, path):
    """A torch.save'd state dict, loaded with weights_only=True (no code runs) -> name -> ndarray."""
    torch = _import_torch(f"reading {path!r} (a torch.save file)")
    if torch_version(torch) < TORCH_SAFE_LOAD:
        raise UserError(f"reading {path!r} (a .pt file) needs PyTorch 2.6 or later, whose weights_only loading "
                        f"runs no code (torch {torch.__version__} is installed); `pip install -U torch`, or "
                        f"convert the file to .safetensors with a current torch")
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:   # torch raises many types for damaged or unsafe files
        raise UserError(f"could not read {path!r} as a PyTorch file: {str(e).splitlines()[0][:100]}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path!r} does not hold a state dict (name -> tensor); save model.state_dict()")
    bad = [f"{k} ({v.dtype})" for k, v in obj.items() if v.dtype not in (torch.float32, torch.float64)]
    if bad:
        raise UserError(f"{path!r}: {', '.join(bad[:3])} are not float32/float64; convert in PyTorch first "
                        f"(model.float() or model.double())")
    return {str(k): v.detach().cpu().numpy() for k, v in obj.items()}


def read_state_dict(path):
    """A state dict file -> name -> ndarray.  The format is told by content: a zip is torch.save's
    format (needs torch), anything else is read as safetensors (no torch needed)."""
    if not os.path.exists(path):
        raise UserError(f"state dict {path!r} does not exist; pass a .safetensors or .pt file")
    raw = read_regular(path, "state dict")
    if raw[:4] == b"PK\x03\x04":
        return _read_torch_file(raw, path)
    from safetensors.numpy import load as st_load
    try:
        return dict(st_load(raw))
    except Exception as e:   # safetensors raises its own types for malformed data and unknown dtypes
        raise UserError(f"could not read {path!r} as safetensors ({str(e).splitlines()[0][:100]}); pass a "
                        f"float32/float64 .safetensors file or a torch.save'd .pt state dict") from None


def write_vocab(path, symbols):
    data = (json.dumps(list(symbols), ensure_ascii=False, indent=0) + "\n").encode("utf-8")
    _write(path, data, "vocabulary")


def read_vocab(path, V):
    """A JSON list of V distinct symbols (single characters, or <unk>) -> Vocab."""
    if not os.path.exists(path):
        raise UserError(f"vocabulary {path!r} does not exist; pass --vocab with the JSON list of symbols "
                        f"in index order (export writes it as FILE.vocab.json)")
    try:
        symbols = json.loads(read_regular(path, "vocabulary").decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"vocabulary {path!r} is not valid UTF-8 JSON ({str(e)[:80]})") from None
    why = vocab_problem(symbols)
    if why:
        raise UserError(f"vocabulary {path!r} must be a JSON list of distinct single characters (and optionally "
                        f"{UNK!r}) in index order: {why}")
    if len(symbols) != V:
        raise UserError(f"vocabulary {path!r} has {len(symbols)} symbols but the weights have V={V} rows "
                        f"(embedding.weight); pass the vocabulary the model was trained with")
    return Vocab(symbols)


# ----------------------------------------------------------------------------
# The two commands
# ----------------------------------------------------------------------------

def export_torch(ckpt_path, out_path, force=False):
    """Checkpoint -> state dict at out_path and vocabulary beside it.  -> dict(path, vocab_path, config).

    Neither output may be the checkpoint or a run's file; an existing checkpoint needs force."""
    vocab_out = vocab_path_for(out_path)
    inputs = [ckpt_path, checkpoint.resolve(ckpt_path)]
    check_output(out_path, inputs, "-o", force)
    check_output(vocab_out, inputs, "the vocabulary file", force)
    tensors, meta = checkpoint.load(ckpt_path)
    cfg = ModelConfig(**meta["model"])
    if cfg.cell not in TORCH_CELLS:
        raise UserError(f"{ckpt_path!r} holds a {cfg.cell} model, which PyTorch has no module for; "
                        f"export takes lstm and gru models (nn.LSTM, nn.GRU)")
    params = {n[6:]: t for n, t in tensors.items() if n.startswith("param.")}
    write_state_dict(out_path, to_state_dict(params, cfg.layers, cfg.cell))
    write_vocab(vocab_out, meta["vocab"])
    return {"path": out_path, "vocab_path": vocab_out, "config": cfg.to_dict()}


def import_torch(path, vocab_path, out_path, force=False):
    """State dict + vocabulary JSON -> an lstm-engine checkpoint at out_path (fresh Adam moments,
    zero hidden state, step 0, no training corpus recorded).  -> dict(path, config).

    out_path may not be an input or a run's file; an existing checkpoint needs force."""
    from ..core.train import TrainConfig, checkpoint_contents
    vocab_path = vocab_path or vocab_path_for(path)
    check_output(out_path, [path, vocab_path], "-o", force)
    sd = read_state_dict(path)
    cfg, params = from_state_dict(sd, repr(path))
    vocab = read_vocab(vocab_path, cfg.vocab_size)
    # no corpus, batch size or window length were used here: None lets `train --resume` take any
    tcfg = TrainConfig(corpus="", cell=cfg.cell, embed_size=cfg.embed_size, hidden_size=cfg.hidden_size,
                       layers=cfg.layers, dropout=0.0, dtype=cfg.dtype, batch_size=None, seq_len=None)
    zeros = {n: np.zeros_like(p) for n, p in params.items()}
    state = [(np.zeros((1, cfg.hidden_size), cfg.dtype),) * 2 for _ in range(cfg.layers)]  # (1,H) broadcasts to (B,H)
    trainer = {"step": 0, "position": 0, "best_val": None, "elapsed": 0.0, "history": [],
               "rng": np.random.default_rng(tcfg.seed + 1).bit_generator.state}   # as Trainer.__init__ seeds it
    tensors, meta = checkpoint_contents(params, zeros, zeros, state, cfg, tcfg, vocab, None, trainer)
    meta["imported"] = {"from": os.path.basename(path), "vocab": os.path.basename(vocab_path)}
    checkpoint.save(out_path, tensors, meta)
    return {"path": out_path, "config": cfg.to_dict()}
