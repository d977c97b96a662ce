"""`lstm-engine export --format torch` / `import`: names, round trips, error cases, and the docs' PyTorch code.

The safetensors and import -> export parts run without torch; the parts that load into torch skip without it.
Dimension legend: V vocab, E embedding, H hidden, L layers, G = 4H.
"""
import json
import os
import re
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from lstm_engine.storage import checkpoint
from lstm_engine.storage import interop
from lstm_engine.cli import main
from lstm_engine.core.train import TrainConfig, Trainer

from parity import check

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "pytorch-interop.md")
TEXT = "The quick brown fox jumps over the lazy dog; THE END.\n" * 30 + "zZqQ"   # the rarest become <unk>
NAMES = {"embedding.weight", "decoder.weight", "decoder.bias"} | {
    f"lstm.{kind}_{part}_l{k}" for kind in ("weight", "bias") for part in ("ih", "hh") for k in range(2)}


def run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def train_ckpt(dirpath, dtype, steps=30, cell="lstm"):
    """A small trained checkpoint (E8 H16 L2, vocabulary with <unk>) of `cell` -> its path."""
    corpus = os.path.join(dirpath, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write(TEXT)
    cfg = TrainConfig(corpus=corpus, backend="numpy", embed_size=8, hidden_size=16, layers=2, batch_size=4,
                      seq_len=16, lr=1e-2, steps=steps, eval_every=0, sample_every=0, save_every=0,
                      log_every=0, dtype=dtype, max_vocab=len(set(TEXT)) - 3, out=os.path.join(dirpath, "run"),
                      cell=cell)
    Trainer(cfg).run()
    return os.path.join(dirpath, "run", "latest.safetensors")


@pytest.fixture(scope="module", params=["float64", "float32"])
def ckpt(request, tmp_path_factory):
    return train_ckpt(str(tmp_path_factory.mktemp("ckpt")), request.param)


@pytest.fixture(scope="module")
def ckpt64(tmp_path_factory):
    return train_ckpt(str(tmp_path_factory.mktemp("ckpt64")), "float64")


def export(ckpt, out):
    r = run(["export", ckpt, "--format", "torch", "-o", str(out)])
    assert r.exit_code == 0, r.output
    return str(out), interop.vocab_path_for(str(out))


def eval_loss(ckpt, corpus):
    r = run(["eval", ckpt, "--corpus", corpus, "--json", "--backend", "numpy"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["loss_nats"]


# ----------------------------------------------------------------------------
# Without torch: names, layouts, identity, CLI usability of imported checkpoints
# ----------------------------------------------------------------------------

def test_export_writes_documented_names_layouts_and_vocab(ckpt, tmp_path):
    path, vocab_path = export(ckpt, tmp_path / "model.safetensors")
    assert vocab_path == str(tmp_path / "model.vocab.json")
    sd = load_file(path)
    tensors, meta = checkpoint.load(ckpt)
    P = {n[6:]: t for n, t in tensors.items() if n.startswith("param.")}
    H = meta["model"]["hidden_size"]
    assert set(sd) == NAMES
    assert all(t.dtype == np.dtype(meta["model"]["dtype"]) for t in sd.values())
    assert np.array_equal(sd["embedding.weight"], P["Emb"])
    for k in range(2):
        assert np.array_equal(sd[f"lstm.weight_ih_l{k}"], P[f"W{k}"][H:].T)
        assert np.array_equal(sd[f"lstm.weight_hh_l{k}"], P[f"W{k}"][:H].T)
        assert np.array_equal(sd[f"lstm.bias_ih_l{k}"], P[f"b{k}"])
        assert not sd[f"lstm.bias_hh_l{k}"].any()
    assert np.array_equal(sd["decoder.weight"], P["Wy"].T) and np.array_equal(sd["decoder.bias"], P["by"])
    with open(vocab_path, encoding="utf-8") as f:
        symbols = json.load(f)
    assert symbols == meta["vocab"] and symbols[-1] == "<unk>" and len(symbols) == sd["decoder.bias"].shape[0]


def test_export_import_export_is_the_identity(ckpt, tmp_path):
    first, vocab1 = export(ckpt, tmp_path / "a.safetensors")
    r = run(["import", first, "--vocab", vocab1, "-o", str(tmp_path / "imported.safetensors")])
    assert r.exit_code == 0, r.output
    second, vocab2 = export(str(tmp_path / "imported.safetensors"), tmp_path / "b.safetensors")
    a, b = load_file(first), load_file(second)
    assert set(a) == set(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    assert open(vocab1, "rb").read() == open(vocab2, "rb").read()
    # and the weights that came back are the checkpoint's own, bit for bit
    t0, m0 = checkpoint.load(ckpt)
    t1, m1 = checkpoint.load(str(tmp_path / "imported.safetensors"))
    assert m1["model"] == dict(m0["model"], dropout=0.0) and m1["vocab"] == m0["vocab"]
    for n in (k for k in t0 if k.startswith("param.")):
        assert np.array_equal(t0[n], t1[n]), n


def test_imported_checkpoint_generates_and_evals_like_the_original(ckpt64, tmp_path):
    path, vocab = export(ckpt64, tmp_path / "m.safetensors")
    imported = str(tmp_path / "imp.safetensors")
    assert run(["import", path, "-o", imported]).exit_code == 0           # --vocab defaults to m.vocab.json
    corpus = os.path.join(os.path.dirname(os.path.dirname(ckpt64)), "corpus.txt")
    assert eval_loss(imported, corpus) == eval_loss(ckpt64, corpus)
    gen = ["--prime", "The ", "--length", "60", "--seed", "4", "--backend", "numpy"]
    r0, r1 = run(["generate", ckpt64] + gen), run(["generate", imported] + gen)
    assert r1.exit_code == 0 and r1.stdout == r0.stdout and len(r1.stdout) > 60
    r = run(["eval", imported])                                              # no corpus recorded
    assert r.exit_code == 2 and "--corpus" in r.stderr and r.stderr.count("\n") == 1


def test_imported_checkpoint_trains_on_with_any_batch_shape(ckpt64, tmp_path):
    path, _ = export(ckpt64, tmp_path / "m.safetensors")
    imported = str(tmp_path / "imp.safetensors")
    assert run(["import", path, "-o", imported]).exit_code == 0
    corpus = os.path.join(os.path.dirname(os.path.dirname(ckpt64)), "corpus.txt")
    r = run(["train", "--resume", imported, "--corpus", corpus, "--backend", "numpy", "--embed-size", "8",
             "--hidden-size", "16", "--dtype", "float64", "--batch-size", "3", "--seq-len", "7", "--steps", "4",
             "--eval-every", "0", "--sample-every", "0", "--out", str(tmp_path / "tuned")])
    assert r.exit_code == 0, r.output
    t0 = checkpoint.load(imported)[0]
    t1, m1 = checkpoint.load(str(tmp_path / "tuned" / "latest.safetensors"))
    assert m1["trainer"]["step"] == 4 and m1["train"]["batch_size"] == 3
    assert not np.array_equal(t0["param.W0"], t1["param.W0"])               # it did train


def test_import_adds_the_two_torch_biases(tmp_path):
    rng = np.random.default_rng(0)
    sd = {k: rng.standard_normal(s) for k, s in interop.expected_shapes(V=5, E=3, H=4, L=1).items()}
    cfg, params = interop.from_state_dict(sd)
    assert (cfg.vocab_size, cfg.embed_size, cfg.hidden_size, cfg.layers, cfg.dtype) == (5, 3, 4, 1, "float64")
    assert np.array_equal(params["b0"], sd["lstm.bias_ih_l0"] + sd["lstm.bias_hh_l0"])
    back = interop.to_state_dict(params, 1)
    assert np.array_equal(back["lstm.bias_ih_l0"], params["b0"]) and not back["lstm.bias_hh_l0"].any()
    assert np.array_equal(back["lstm.weight_ih_l0"], sd["lstm.weight_ih_l0"])
    assert np.array_equal(back["lstm.weight_hh_l0"], sd["lstm.weight_hh_l0"])


# ----------------------------------------------------------------------------
# Error cases: one line each, exit status 2
# ----------------------------------------------------------------------------

def _state_dict(V=6, E=3, H=4, L=2, dtype="float32"):
    rng = np.random.default_rng(1)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in interop.expected_shapes(V, E, H, L).items()}


def _broken(sd):
    yield "lacks", {k: v for k, v in sd.items() if k != "lstm.bias_hh_l1"}
    yield "has unexpected", dict(sd, **{"lstm.weight_hr_l0": np.zeros((16, 2), np.float32)})
    yield "lacks 3 tensor(s): lstm.weight_hh_l2", dict(sd, **{"lstm.weight_ih_l2": np.zeros((16, 4), np.float32)})
    yield "shape", dict(sd, **{"lstm.weight_ih_l1": np.zeros((16, 3), np.float32)})
    yield "shape", dict(sd, **{"decoder.weight": np.zeros((7, 4), np.float32)})
    yield "has no tensor 'embedding.weight'", {k: v for k, v in sd.items() if k != "embedding.weight"}
    yield "dtype", dict(sd, **{"decoder.bias": sd["decoder.bias"].astype(np.float64)})
    yield "dtype", {k: v.astype(np.float16) for k, v in sd.items()}
    yield "non-finite", dict(sd, **{"decoder.bias": np.full(6, np.nan, np.float32)})


@pytest.mark.parametrize("case", range(9))
def test_bad_state_dicts_are_one_line_errors(case, tmp_path):
    needle, sd = list(_broken(_state_dict()))[case]
    save_file(sd, str(tmp_path / "m.safetensors"))
    (tmp_path / "m.vocab.json").write_text(json.dumps(list("abcdef")))
    r = run(["import", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "out.safetensors")])
    assert r.exit_code == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("vocab, needle", [
    (list("abcde"), "has 5 symbols but the weights have V=6"),
    (list("abcdea"), "twice"),
    ("abcdef", "JSON list"),
    (list("abcde") + ["xy"], "JSON list"),
    (None, "does not exist"),
])
def test_bad_vocabularies_are_one_line_errors(vocab, needle, tmp_path):
    save_file(_state_dict(), str(tmp_path / "m.safetensors"))
    if vocab is not None:
        (tmp_path / "m.vocab.json").write_text(json.dumps(vocab))
    r = run(["import", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "out.safetensors")])
    assert r.exit_code == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_bad_files_and_paths_are_one_line_errors(ckpt64, tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("just text, no tensors here")
    cases = [
        (["import", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "o")], "does not exist"),
        (["import", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "o")], "could not read"),
        (["export", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "o.safetensors")], "does not exist"),
        (["export", ckpt64, "-o", ckpt64], "is the input file"),
        (["export", ckpt64, "-o", str(tmp_path / "no" / "dir" / "m.safetensors")], "could not write"),
    ]
    for args, needle in cases:
        r = run(args)
        assert r.exit_code == 2 and needle in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    r = run(["export", ckpt64, "--format", "onnx", "-o", str(tmp_path / "m.onnx")])   # click's usage error
    assert r.exit_code == 2 and "Invalid value for '--format'" in r.stderr
    monkeypatch.setitem(sys.modules, "torch", None)                          # as if torch were not installed
    r = run(["export", ckpt64, "-o", str(tmp_path / "m.pt")])
    assert r.exit_code == 2 and "needs PyTorch" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "m.pt").exists()


# ----------------------------------------------------------------------------
# With torch: strict loading, the docs' code, the same loss as `eval`, a torch-made .pt
# ----------------------------------------------------------------------------

def import_torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)          # tiny models: more threads only contend on a shared machine
    return torch


def docs_code():
    """The first ```python block of docs/pytorch-interop.md (the loading and sampling snippet)."""
    with open(DOCS, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)[0]


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_docs_code_loads_export_strictly_and_scores_like_eval(ckpt, suffix, tmp_path, monkeypatch, capsys):
    torch = import_torch()
    monkeypatch.chdir(tmp_path)
    export(ckpt, tmp_path / "model.safetensors")
    code = docs_code()
    if suffix == ".pt":
        export(ckpt, tmp_path / "model.pt")
        code = code.replace('load_file("model.safetensors")', 'torch.load("model.pt", weights_only=True)')
        assert "model.pt" in code
    ns = {}
    exec(compile(code, DOCS, "exec"), ns)                                    # strict=True load inside
    printed = capsys.readouterr().out
    assert printed.startswith("The ") and len(printed) >= 204
    dtype = checkpoint.load(ckpt)[1]["model"]["dtype"]
    assert ns["model"].embedding.weight.dtype == getattr(torch, dtype)
    corpus = os.path.join(os.path.dirname(os.path.dirname(ckpt)), "corpus.txt")
    text = open(corpus, encoding="utf-8").read()
    ours, theirs = eval_loss(ckpt, corpus), ns["mean_loss"](ns["model"], text)
    check(f"eval loss via {suffix}", theirs, ours, dtype, backend="numpy", ref="torch")


def test_greedy_text_matches_torch_argmax(ckpt64, tmp_path, monkeypatch, capsys):
    torch = import_torch()
    monkeypatch.chdir(tmp_path)
    export(ckpt64, tmp_path / "model.safetensors")
    ns = {}
    exec(compile(docs_code(), DOCS, "exec"), ns)
    capsys.readouterr()
    model, index, symbols = ns["model"], ns["index"], ns["symbols"]
    with torch.no_grad():
        logits, state = model(torch.tensor([[index[ch]] for ch in "The "]))
        out = []
        for _ in range(40):
            nxt = int(logits[-1, 0].argmax())
            out.append(symbols[nxt])
            logits, state = model(torch.tensor([[nxt]]), state)
    r = run(["generate", ckpt64, "--prime", "The ", "--length", "40", "--greedy", "--backend", "numpy"])
    assert r.stdout.rstrip("\n") == "The " + "".join(out).replace("<unk>", "\ufffd")


def test_torch_trained_pt_imports_with_the_same_loss(tmp_path, monkeypatch):
    """A model made in PyTorch (random init, so bias_hh is not zero) -> .pt -> import -> eval."""
    torch = import_torch()
    monkeypatch.chdir(tmp_path)
    symbols = sorted(set(TEXT))
    V, E, H, L = len(symbols), 5, 7, 3
    torch.manual_seed(0)
    m = torch.nn.Module()
    m.embedding, m.lstm, m.decoder = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, L), torch.nn.Linear(H, V)
    m = m.double()
    assert m.lstm.bias_hh_l0.abs().sum() > 0
    torch.save(m.state_dict(), "mine.pt")
    (tmp_path / "mine.vocab.json").write_text(json.dumps(symbols))
    r = run(["import", "mine.pt", "-o", "mine.safetensors"])
    assert r.exit_code == 0, r.output
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    ids = torch.tensor([symbols.index(ch) for ch in TEXT])
    with torch.no_grad():
        out, _ = m.lstm(m.embedding(ids[:-1, None]))
        ref = torch.nn.functional.cross_entropy(m.decoder(out[:, 0]), ids[1:]).item()
    ours = eval_loss("mine.safetensors", "text.txt")
    check("eval loss of the import", ours, ref, "float64", backend="numpy", ref="torch")
    # a .pt holding something other than a state dict is refused without running anything
    torch.save({"model": m.state_dict()}, "nested.pt")
    r = run(["import", "nested.pt", "--vocab", "mine.vocab.json", "-o", "x.safetensors"])
    assert r.exit_code == 2 and "state dict" in r.stderr and r.stderr.count("\n") == 1


# ----------------------------------------------------------------------------
# The other cells: gru <-> nn.GRU; peephole and coupled have no PyTorch module
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gru64(tmp_path_factory):
    return train_ckpt(str(tmp_path_factory.mktemp("gru64")), "float64", steps=10, cell="gru")


def test_gru_export_names_layouts_and_import_back_bit_for_bit(gru64, tmp_path):
    path, vocab_path = export(gru64, tmp_path / "gru.safetensors")
    sd = load_file(path)
    tensors, meta = checkpoint.load(gru64)
    P = {n[6:]: t for n, t in tensors.items() if n.startswith("param.")}
    H = meta["model"]["hidden_size"]
    assert set(sd) == {n.replace("lstm.", "gru.") for n in NAMES}
    for k in range(2):
        assert sd[f"gru.weight_ih_l{k}"].shape == (3 * H, 8 if k == 0 else H)
        assert np.array_equal(sd[f"gru.weight_ih_l{k}"], P[f"W{k}"][H:].T)
        assert np.array_equal(sd[f"gru.weight_hh_l{k}"], P[f"W{k}"][:H].T)
        assert np.array_equal(sd[f"gru.bias_ih_l{k}"], P[f"bx{k}"])
        assert np.array_equal(sd[f"gru.bias_hh_l{k}"], P[f"bh{k}"])
    imported = str(tmp_path / "imported.safetensors")
    r = run(["import", path, "-o", imported])
    assert r.exit_code == 0, r.output
    t1, m1 = checkpoint.load(imported)
    assert m1["model"] == dict(meta["model"], dropout=0.0) and m1["model"]["cell"] == "gru"
    for n in (k for k in tensors if k.startswith("param.")):
        assert np.array_equal(tensors[n], t1[n]), n
    corpus = os.path.join(os.path.dirname(os.path.dirname(gru64)), "corpus.txt")
    assert eval_loss(imported, corpus) == eval_loss(gru64, corpus)


def test_gru_export_gives_nn_gru_the_same_logits(gru64, tmp_path):
    torch = import_torch()
    path, _ = export(gru64, tmp_path / "gru.safetensors")
    tensors, meta = checkpoint.load(gru64)
    V, E, H, L = (meta["model"][k] for k in ("vocab_size", "embed_size", "hidden_size", "layers"))
    m = torch.nn.Module()
    m.embedding, m.gru, m.decoder = torch.nn.Embedding(V, E), torch.nn.GRU(E, H, L), torch.nn.Linear(H, V)
    m = m.double()
    m.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(path).items()}, strict=True)
    ids = np.array([i % V for i in range(0, 7 * 23, 7)]).reshape(-1, 1)             # (T,1)
    with torch.no_grad():
        out, _ = m.gru(m.embedding(torch.from_numpy(ids)))
        theirs = m.decoder(out[:, 0]).numpy()                                       # (T,V)
    from lstm_engine import api
    model, _, _ = api.load_model(gru64, backend="numpy")
    ours, _, _ = model.forward(ids, model.zero_state(1))
    check("gru logits via nn.GRU", ours, theirs, "float64", backend="numpy", ref="torch")


@pytest.mark.parametrize("cell", ["peephole", "coupled"])
def test_export_of_a_cell_pytorch_lacks_is_one_line_and_writes_nothing(cell, tmp_path):
    ckpt = train_ckpt(str(tmp_path), "float32", steps=1, cell=cell)
    out = tmp_path / "x.safetensors"
    r = CliRunner().invoke(main, ["export", ckpt, "--format", "torch", "-o", str(out)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and cell in r.stderr and "Traceback" not in r.output
    assert not out.exists() and not os.path.exists(interop.vocab_path_for(str(out)))


def test_a_torch_made_nn_gru_imports_as_a_gru_with_the_same_loss(tmp_path, monkeypatch):
    """nn.GRU's own random init (both biases non-zero) -> .safetensors -> import -> a gru checkpoint whose eval
    loss is torch's."""
    torch = import_torch()
    from safetensors.torch import save_file as torch_save_file
    monkeypatch.chdir(tmp_path)
    symbols = sorted(set(TEXT))
    V, E, H, L = len(symbols), 5, 7, 2
    torch.manual_seed(0)
    m = torch.nn.Module()
    m.embedding, m.gru, m.decoder = torch.nn.Embedding(V, E), torch.nn.GRU(E, H, L), torch.nn.Linear(H, V)
    m = m.double()
    torch_save_file(m.state_dict(), "gru.safetensors")
    (tmp_path / "gru.vocab.json").write_text(json.dumps(symbols))
    r = run(["import", "gru.safetensors", "-o", "mine.safetensors"])
    assert r.exit_code == 0, r.output
    assert checkpoint.load("mine.safetensors")[1]["model"]["cell"] == "gru"
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    ids = torch.tensor([symbols.index(ch) for ch in TEXT])
    with torch.no_grad():
        out, _ = m.gru(m.embedding(ids[:-1, None]))
        ref = torch.nn.functional.cross_entropy(m.decoder(out[:, 0]), ids[1:]).item()
    check("eval loss of the gru import", eval_loss("mine.safetensors", "text.txt"), ref, "float64",
          backend="numpy", ref="torch")
