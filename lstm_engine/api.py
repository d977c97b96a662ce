"""The Python API: every decision the `lstm-engine` command makes lives here; the CLI parses and prints.

    import lstm_engine as le
    text = le.load_corpus("python-docs")
    trainer = le.train(le.TrainConfig(steps=200, out="runs/demo"))
    model, vocab, meta = le.load_model("runs/demo/latest.safetensors")
    print(le.generate(model, vocab, prime="def ", length=100, seed=1))
    print(le.evaluate(model, vocab, text[-5000:]))
    print(le.evaluate_checkpoint("runs/demo/latest.safetensors"))      # on the run's own val split
"""
from __future__ import annotations

import os

from . import parallel
from .backends import get_backend
from .core import environment as env
from .core.config import check_names, config_for_resume, explicit_fields, with_corpus_suggestions
from .core.data import Vocab, load_corpus, split
from .core.generation import bits, check_sampling_options, evaluate_ids, generate_text
from .core.model import GATE_BLOCKS, Model, ModelConfig, check_cell
from .core.resources import check_fits_memory, check_training_memory
from .core.train import TrainConfig, Trainer
from .errors import UserError
from .storage import checkpoint
from .storage.atomic import atomic_write_bytes
from .storage.files import check_output, display_name, read_regular
from .storage.schema import INT_MAX

INSPECT_BYTES = 6 * 4 * 3         # per character, layer and unit: six float32 states, their statistics


def state_dir():
    """Where the engine remembers the last run ($LSTM_ENGINE_STATE_DIR or XDG state home)."""
    d = env.get("LSTM_ENGINE_STATE_DIR")
    if not d:
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        d = os.path.join(base, "lstm-engine")
    return d


def remember_last_run(out_dir):
    try:
        os.makedirs(state_dir(), exist_ok=True)
        # bytes as the file system gave them: a name that is not UTF-8 round-trips through os.fsdecode
        atomic_write_bytes(os.path.join(state_dir(), "last_run"), os.fsencode(os.path.abspath(out_dir)))
    except OSError:
        pass   # remembering is a convenience; never fail a run over it


def last_checkpoint():
    """Path of the latest checkpoint of the last run, or a UserError saying what to pass."""
    record = os.path.join(state_dir(), "last_run")
    try:
        run = os.fsdecode(read_regular(record, "the last-run record").strip())
    except UserError:
        run = ""
    path = os.path.join(run, "latest" + checkpoint.EXT) if run else ""
    if not path or not os.path.exists(path):
        raise UserError("no checkpoint given and no previous run found; train first "
                        "(`lstm-engine train`) or pass a checkpoint path")
    return path


# -- training --------------------------------------------------------------------------------------

def train_config(options=None, resume=None, mpi=None):
    """The TrainConfig of a run from the options the user chose ({TrainConfig field: value}).

    A new run: the engine defaults, overridden by `options`.  resume=PATH (a checkpoint or a run
    directory): the checkpoint's options, overridden by `options`, which must agree with the fixed
    ones (sizes, windows, seed); --out defaults to the checkpoint's directory.
    mpi: train on the ranks of an MPI launch (True), in this process alone (False), or the first
    when a launcher started several ranks (None; see lstm_engine.parallel).
    """
    def settle():
        opts = dict(options or {})
        check_names(opts)
        if resume:
            return config_for_resume(checkpoint.read_meta(resume), opts, resume)
        return TrainConfig(**opts)
    return parallel.connect(mpi).agree(settle)


def prepare_training(cfg: TrainConfig, text=None, resume=None, on_event=None, explicit=None):
    """A Trainer with the run's options settled, ready to `run()`; the run is remembered for
    last_checkpoint() when it saves a checkpoint (so that another run still starting, with nothing
    saved yet, never hides the checkpoint of the last one that saved).

    explicit: names of the options the user set (default: the fields of cfg that differ from the
    TrainConfig defaults).  A new run takes the corpus's suggested embed_size and max_vocab
    (`lstm-engine corpus info`: they differ from the defaults for corpora of over 256 symbols)
    unless they are explicit, and reports those that differ as a 'suggested' event
    {'options': {name: value}}; under a time budget the recipe chooses what is not explicit.
    A resumed run keeps cfg as given (train_config(options, resume) builds it from the checkpoint).
    Under an MPI launch every rank calls this (docs/distributed.md): rank 0 alone reports and writes.
    """
    group = parallel.connect()

    def on_event_(kind, info):
        if kind == "save" and group.root:
            remember_last_run(os.path.dirname(info["path"]))
        if on_event is not None:
            on_event(kind, info)

    def settle(cfg=cfg, text=text):
        explicit_ = explicit_fields(cfg) if explicit is None else set(explicit)
        if not resume:
            text = load_corpus(cfg.corpus, cfg.encoding) if text is None else text
            cfg, suggested = with_corpus_suggestions(cfg, explicit_, text)
            if suggested and on_event is not None and group.root:
                on_event("suggested", {"options": suggested})
        return Trainer(cfg, text=text, resume=resume, on_event=on_event_, explicit=explicit_, group=group)
    return group.agree(settle)             # a failure on any rank fails every rank, reported once


def train(cfg: TrainConfig, text=None, resume=None, on_event=None, explicit=None):
    """Train a model; -> the Trainer (its .cfg, .model, .vocab, .st hold the result).

    The options are settled as `lstm-engine train` settles them (see prepare_training): on a corpus
    of over 256 symbols a new run takes the corpus's suggested embed_size / max_vocab unless cfg sets
    them (a value differing from the default) or `explicit` names them.
    """
    trainer = prepare_training(cfg, text=text, resume=resume, on_event=on_event, explicit=explicit)
    trainer.run()
    return trainer


# -- models: load, score, sample ------------------------------------------------------------------

def tune(configs="seed", dtype="float32", on_record=None, cells="lstm"):
    """Measure the numba backend's GEMM candidates on every big product of these model sizes (bench's
    config names or E,H,L,B,T[,V]) with the layers of each of `cells` (comma-separated), validate each
    against NumPy and cache the choices for this machine (backends/numba_tune.py), then each config's
    layer thread plan (numba_tune_plan.py) and, for each cell, its sampler team (numba_tune_sample.py),
    and where the CPU has bfloat16 products, whether they train a layer faster (numba_tune_bf16.py)
    -> (machine key dict, [record]); on_record(record) as each is done."""
    from .backends import numba_backend, numba_tune
    from .bench.configs import parse_configs
    if dtype not in ("float32", "float64"):
        raise UserError(f"--dtype must be float32 or float64, not {dtype!r}")
    cell_list = [c.strip() for c in str(cells).split(",") if c.strip()]
    for cell in cell_list or [""]:
        check_cell(cell)
    ok, why = numba_backend.is_available()
    if not ok:
        raise UserError(f"lstm-engine tune needs the numba backend: {why}")
    cfgs = parse_configs(configs)
    items = []
    for c in cfgs:
        for cell in cell_list or ["lstm"]:
            check_training_memory(c.V, c.E, c.H, c.L, c.B, c.T, dtype, cell)   # the products it times are a step's
        items += numba_backend.tune_products(c.E, c.H, c.L, c.B, c.T, c.V, cell_list or ["lstm"])
    if not items:
        raise UserError("no products to tune in these configs")
    import numba
    records = numba_tune.retune(items, dtype, on_record)
    for c in cfgs:
        plan = numba_backend.tune_plan(c.T, c.B, c.H, dtype)
        records += [plan] if plan is not None else []
        if plan is not None and on_record is not None:
            on_record(plan)
        for cell in cell_list:
            records += _tune_sampler(c, dtype, on_record, cell)
    if dtype == "float32" and numba_backend.bf16_products()[0]:
        records.append(numba_backend.tune_bf16())                    # what --products auto asks under a budget
        if on_record is not None:
            on_record(records[-1])
    return numba_tune.machine_key(numba.get_num_threads()), records


def _tune_sampler(c, dtype, on_record, cell="lstm"):
    """The sampler's one-thread-or-team choice measured again on a `cell` model of config c (random
    weights) -> [record], none where it is ruled (one thread, H below numba_tune_sample.MIN_H).
    A short text reads layer 0 as a product and a long one from the V x G table (numba_backend.
    V_TABLE_MIN_CHARS_PER_ROW): where V decides between them, both samplers are measured."""
    import math

    import numpy as np

    from .backends import numba_backend, numba_tune_sample
    from .core.model import init_params
    cfg = ModelConfig(c.V, c.E, c.H, c.L, dtype=dtype, cell=cell)
    weights = init_params(cfg)
    short = 256
    texts = [short] if short >= numba_backend.V_TABLE_MIN_CHARS_PER_ROW * c.V else [short, math.inf]
    records = []
    for chars in texts:
        state = [[np.zeros((1, c.H), dtype), np.zeros((1, c.H), dtype)] for _ in range(c.L)]
        cache = {"chars": chars}
        with numba_tune_sample.retuning() as got:
            numba_backend.generate(weights, state, 0, 1, rng=np.random.default_rng(0), cache=cache, cell=cell)
        if "team" in cache:
            cache["team"][1].close()
        records += got
    for r in records if on_record is not None else ():
        on_record(r)
    return records


def check_environment():
    """Every LSTM_ENGINE_* variable that is set holds a value it accepts (one line naming it if not)."""
    env.check_all()


def load_model(path, backend="auto"):
    """-> (Model on the chosen backend, Vocab, metadata dict) from a checkpoint file."""
    tensors, meta = checkpoint.load(path)
    cfg = ModelConfig(**meta["model"])
    params = {n[6:]: t for n, t in tensors.items() if n.startswith("param.")}
    return Model(cfg, get_backend(backend), params), Vocab(meta["vocab"]), meta


def evaluate(model, vocab, text):
    """Mean loss of `text` scored as one stream from a zero state.

    -> dict(loss_nats, bits_per_char, chars)."""
    loss, n = evaluate_ids(model, vocab.encode(text))
    return {"loss_nats": loss, "bits_per_char": bits(loss), "chars": n}


def val_split_ids(meta, vocab, path):
    """Token ids (N,) of the val split of the corpus a checkpoint was trained on, as training split it."""
    t = meta.get("train") or {}
    if not t.get("corpus"):
        raise UserError(f"{path} records no training corpus (it was imported); pass --corpus FILE")
    ids = vocab.encode(load_corpus(t["corpus"], t.get("encoding", "utf-8")))
    return split(ids, t.get("val_fraction", 0.1))[1]


def evaluate_checkpoint(path, corpus=None, encoding="utf-8", backend="auto", text=None):
    """Score a checkpoint on `text`, on `corpus` (a name or file), or by default on the val split of
    the corpus it was trained on (the ids training evaluated, <unk> included).

    -> dict(loss_nats, bits_per_char, chars, corpus: what was scored, printable)."""
    model, vocab, meta = load_model(path, backend)
    if text is not None:
        return dict(evaluate(model, vocab, text), corpus=corpus or "text")
    if corpus is not None:
        return dict(evaluate(model, vocab, load_corpus(corpus, encoding)), corpus=display_name(corpus))
    loss, n = evaluate_ids(model, val_split_ids(meta, vocab, path))
    return {"loss_nats": loss, "bits_per_char": bits(loss), "chars": n,
            "corpus": f"{display_name(meta['train']['corpus'])} (val split)"}


def generate(model, vocab, prime="", length=200, temperature=1.0, top_k=None, top_p=1.0,
             greedy=False, seed=None, on_text=None, keep=True):
    """Sample text after `prime` (see generation.generate_text); top_k None or 0: every symbol.

    keep=False (with on_text) holds one chunk at a time and returns "": any length in constant memory."""
    return generate_text(model, vocab, prime, length, temperature, top_k or 0, top_p, greedy, seed, on_text,
                         keep=keep)


SAMPLER_WEIGHTS = ("auto", "float32", "bf16", "int8")   # generate --products


def load_for_generation(path=None, backend="auto", prime="", length=200, temperature=1.0, top_k=None,
                        top_p=1.0, seed=None, products="auto"):
    """Check the sampling options, load the checkpoint (default: the latest of the last run) and
    check that `prime` is in its vocabulary, so that nothing fails once text is out.

    top_k: None keeps every symbol; a given top_k must be >= 1.  products: what the numba
    backend's sampler streams for a float32 model in this process (numba_backend.use_products):
    'bf16' its weights rounded to bfloat16, 'int8' 8-bit codes with a float32 scale per column,
    'float32' the weights as stored, 'auto' bf16 where the checkpoint trained with bfloat16
    products (its forward passes already multiplied the weights rounded so), else float32.
    -> (model, vocab, path)."""
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be >= 1 (got {top_k}); leave it out to keep every symbol")
    if products not in SAMPLER_WEIGHTS:
        raise UserError(f"--products must be one of {', '.join(SAMPLER_WEIGHTS)} (got {products!r})")
    check_sampling_options(temperature, top_k, top_p, length, seed)
    path = path or last_checkpoint()
    model, vocab, meta = load_model(path, backend)
    vocab.encode(prime, strict=True)
    usable = model.be.NAME == "numba" and model.cfg.dtype == "float32"
    if products == "auto":
        products = "bf16" if usable and (meta.get("train") or {}).get("products") == "bf16" else "float32"
    if products in ("bf16", "int8") and not usable:
        raise UserError(f"--products {products} samples a float32 model on the numba backend; this one is "
                        f"{model.cfg.dtype} on {model.be.NAME}: use --backend numba, or leave --products out")
    if model.be.NAME == "numba":
        model.be.use_products(products)              # also undoes an earlier call's bf16 or int8 in this process
    return model, vocab, path


# -- interop and teaching tools ---------------------------------------------------------------------

def export_torch(path, out, force=False):
    """Checkpoint -> PyTorch state dict at `out`, vocabulary beside it.  -> dict(path, vocab_path, config).

    Never onto the checkpoint or a run's file; onto another existing checkpoint only with force."""
    from .storage import interop
    return interop.export_torch(path, out, force)


def import_torch(state_dict, vocab, out, force=False):
    """PyTorch state dict + vocabulary JSON (None: beside it) -> a checkpoint at `out`.  -> dict(path, config).

    Never onto an input or a run's file; onto an existing checkpoint only with force."""
    from .storage import interop
    return interop.import_torch(state_dict, vocab, out, force)


def explain(checkpoint_path=None, text=None, layer=0, input_size=2, hidden_size=3, seed=0, backward=False,
            units=None, max_check=64, fmt="text", output=None, cell=None):
    """One layer of a cell stepped through with real numbers, as rendered blocks (list of str).

    A checkpoint (then `text` is required; its own cell) or a fresh tiny model of `cell` (default lstm;
    text default 'hello'); with `output` the blocks are also written to that file."""
    from .teaching import explain as ex
    from .teaching.explain_cells import explain as explain_any_cell
    from .teaching.explain_render import render
    if output:
        check_output(output, _checkpoint_inputs(checkpoint_path), "-o")
    if not 0 <= seed <= INT_MAX:
        raise UserError(f"--seed must be in [0, {INT_MAX}] (got {seed})")
    if not checkpoint_path:
        # the tiny model in float64: W (H+I, G), its gradient, a copy per checked entry, the states
        check_fits_memory(8 * 4 * (hidden_size + input_size) * GATE_BLOCKS.get(cell, 4) * hidden_size,
                          f"a model of --input-size {input_size} --hidden-size {hidden_size}", "pass smaller sizes")
    if checkpoint_path:
        setup = ex.checkpoint_setup(checkpoint_path, text, layer)
        if cell is not None and cell != setup.cfg.cell:
            raise UserError(f"--cell {cell}: this checkpoint holds a {setup.cfg.cell} model; "
                            f"leave --cell out to explain the checkpoint's own cell")
    else:
        setup = ex.tiny_setup(**({} if text is None else {"text": text}), input_size=input_size,
                              hidden_size=hidden_size, seed=seed, cell=cell or "lstm")
    chunks = render(explain_any_cell(setup, backward, units, max_check, seed), fmt)
    if output:
        try:
            atomic_write_bytes(output, ("\n".join(chunks) + "\n").encode("utf-8", "backslashreplace"))
        except OSError as e:
            raise UserError(f"could not write {output!r}: {e.strerror or e}") from None
    return chunks


def check_output_path(path, option, inputs=(), force=None):
    """UserError when writing `path` would overwrite one of `inputs`, a training run's file or (without
    force; None: the command has no --force) a checkpoint; links resolved (see storage.files.check_output)."""
    check_output(path, list(inputs), option, force)


def _checkpoint_inputs(path):
    """The files a checkpoint argument reads: the path itself and, for a run directory, its checkpoint."""
    if not path:
        return []
    try:
        return [path, checkpoint.resolve(path)]
    except UserError:
        return [path]


def inspect_cells(path, out_html, text=None, text_file=None, encoding="utf-8", layer=None, unit=None, kind="h",
                  rank=None, top=5, max_chars=4000):
    """Colour a text (given, or read from text_file) by single cells of a checkpoint; write out_html.

    -> dict(ranking, shown, chars: characters read) (see teaching.inspect_cells.inspect)."""
    from .corpora.text import read_text_file
    from .teaching import inspect_cells as cells
    if (text_file is None) == (text is None):
        raise UserError("pass exactly one of --text FILE or --prime TEXT")
    if max_chars < 2:
        raise UserError(f"--max-chars must be >= 2 (got {max_chars})")
    check_output(out_html, _checkpoint_inputs(path) + [text_file], "--html")
    text = read_text_file(text_file, encoding) if text_file else text
    model, vocab, _ = load_model(path, "numpy")
    L, H, n = model.cfg.layers, model.cfg.hidden_size, min(len(text), max_chars)
    check_fits_memory(n * L * H * INSPECT_BYTES, f"inspecting {n:,} characters (--max-chars) with L{L} H{H}",
                      "pass a smaller --max-chars")
    if rank:
        cells.feature_values("", rank)           # an unknown feature fails before the model runs
    res = cells.inspect(model, vocab, text[:max_chars], out_html, layer, unit, kind, rank, top,
                        source=display_name(text_file) if text_file else "--prime")
    return dict(res, chars=min(len(text), max_chars))


def explore_server(path=None, host="127.0.0.1", port=0, text=None):
    """The explorer's web server for a checkpoint (default: the latest of the last run), bound to
    host:port (port 0: a free one) and not yet serving: call .serve_forever(); .url is its address.

    -> (server, warning): the warning (or None) says what binding off the loopback means."""
    from .teaching.explore import server
    if text is not None:
        raise UserError("--text goes with --html FILE; the served page takes its text in the browser")
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535 (got {port}); leave it out for a free port")
    return server.start(path or last_checkpoint(), host, port), server.host_warning(host)


def explore_html(path, out_html, text):
    """The explorer's page for `text` with every number baked in, written to out_html (no server needed).

    -> dict(path, chars, bytes)."""
    from .teaching.explore.page import write_page
    path = path or last_checkpoint()
    check_output(out_html, _checkpoint_inputs(path), "--html")
    return write_page(path, out_html, text)


def plot_run(run_dir, output="loss.png", title=None):
    """A run's train and val loss against steps and wall time, written to `output` (needs matplotlib)."""
    from .teaching.plot import plot_run as plot
    run = os.path.dirname(run_dir) if os.path.isfile(run_dir) else run_dir
    names = ("history.jsonl", "train_log.jsonl", "latest" + checkpoint.EXT, "best" + checkpoint.EXT)
    check_output(output, [run_dir] + [os.path.join(run, n) for n in names], "-o")
    return plot(run_dir, output, title)


__all__ = ["Model", "ModelConfig", "TrainConfig", "Trainer", "UserError", "Vocab", "check_environment",
           "check_output_path", "evaluate", "evaluate_checkpoint", "explain", "explore_html", "explore_server",
           "export_torch", "generate", "get_backend", "import_torch", "inspect_cells", "last_checkpoint",
           "load_corpus", "load_for_generation", "load_model", "plot_run", "prepare_training", "train",
           "train_config"]
