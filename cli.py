"""The `lstm-engine` command line: parses options, calls lstm_engine.api, prints.

Installed as lstm_engine.cli (lstm_engine/cli.py links here; see setup.cfg); nothing here computes anything.
"""
from __future__ import annotations

import codecs
import contextlib
import json
import math
import os
import shlex
import signal
import sys
import threading

import click

from lstm_engine import api
from lstm_engine.backends import numba_notice
from lstm_engine.core.budget import parse_duration
from lstm_engine.core.config import PRODUCTS, defaults as train_defaults
from lstm_engine.core.generation import bits
from lstm_engine.core.model import CELLS
from lstm_engine.corpora import registry as corpora
from lstm_engine.errors import UserError


def err(msg):
    click.echo(msg, err=True)


def _fmt_time(s):
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _unwritable_output(exc):
    """Error handler of a strict stdout: a character its encoding lacks ends the command with one line."""
    ch = exc.object[exc.start]
    raise UserError(f"the output encoding {sys.stdout.encoding} cannot write {ch!r} (U+{ord(ch):04X}); set "
                    f"PYTHONIOENCODING=utf-8 or a UTF-8 locale to print this text")


codecs.register_error("lstm-engine-stdout", _unwritable_output)


def _interrupt(signum, frame):
    """Ctrl-C as KeyboardInterrupt, except while llvmlite's Python code runs (numba compiling):
    raised inside its ctypes callbacks it would be printed and dropped, so the signal comes back a
    moment later, once that code has returned."""
    f = frame
    while f is not None:
        if f.f_globals.get("__name__", "").startswith("llvmlite"):
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        f = f.f_back
    raise KeyboardInterrupt


@contextlib.contextmanager
def _interrupts():
    """_interrupt as the SIGINT handler while a command runs (where Python's own is installed and
    this is the main thread: signal handlers are set there only)."""
    ours = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)


# What to make smaller when a command runs out of memory: the options of that command.
_MEMORY_HINTS = {
    "train": "use a smaller model or batch (--hidden-size, --batch-size, --seq-len)",
    "bench": "bench fewer or smaller models (--configs, --sweep) or fewer backends (--backends)",
    "tune": "tune for smaller models (--configs)",
    "eval": "score a shorter text (--corpus)",
    "generate": "the checkpoint's model does not fit in this machine's memory",
}
_MEMORY_HINT = "close other programs or use a smaller model or text"


class Group(click.Group):
    """Turns UserError (and a mistyped option) into one line on stderr and exit status 2; Ctrl-C into status 130."""

    def invoke(self, ctx):
        try:
            if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
                sys.stdout.reconfigure(errors="lstm-engine-stdout")     # not a traceback mid-text
            api.check_environment()
            if sys.stderr.isatty():                    # a person waiting at a terminal: say why nothing moves
                numba_notice.enable(err)
            with _interrupts():
                return super().invoke(ctx)
        except UserError as e:
            if not getattr(e, "quiet", False):     # quiet: another MPI rank reports the same error
                err(f"error: {e}")
            sys.exit(2)
        except click.UsageError as e:
            sub = f" {e.ctx.info_name}" if e.ctx is not None and e.ctx.parent is not None else ""
            err(f"error: {e.format_message()} (see: lstm-engine{sub} --help)")
            sys.exit(2)
        except MemoryError:
            err(f"error: out of memory; {_MEMORY_HINTS.get(ctx.invoked_subcommand, _MEMORY_HINT)}")
            sys.exit(2)
        except KeyboardInterrupt:
            err("interrupted")
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(1)


@click.group(cls=Group)
@click.version_option(package_name="lstm-engine")
def main():
    """Character-level LSTM language models, written by hand."""


def _print_event(kind, info):
    if kind == "start":
        m = info["model"]
        cell = "" if m["cell"] == "lstm" else m["cell"] + " "
        err(f"backend {info['backend']}  model {cell}E{m['embed_size']} H{m['hidden_size']} L{m['layers']} "
            f"dropout {m['dropout']} {m['dtype']}" + (" with bfloat16 products" if info.get("products") == "bf16" else "")
            + f"  {info['params']:,} parameters")
        err(f"corpus: {info['train_chars']:,} train / {info['val_chars']:,} val chars, vocab {info['vocab']}, "
            f"unigram entropy {info['entropy']:.3f} nats/char ({bits(info['entropy']):.3f} bits/char)")
        err(f"writing checkpoints to {info['out']}" + (f" (resuming at step {info['step']})" if info["step"] else ""))
        if "ranks" in info:         # a launcher that reports a dead process names its pid
            err("MPI ranks: " + ", ".join(f"rank {r} pid {pid} on {host}"
                                         for r, (host, pid) in enumerate(info["ranks"])))
    elif kind == "log":
        total = f"/{info['steps']}" if info["steps"] else ""     # None: a time budget has no step count
        err(f"step {info['step']:>6}{total}  loss {info['loss']:.4f} ({bits(info['loss']):.3f} bits/char)"
            f"  |g| {info['grad_norm']:.2f}  {info['chars_per_s']:,.0f} chars/s  ETA {_fmt_time(info['eta_s'])}"
            + (f"  K={info['ranks']} all-reduce {info['allreduce_share']:.0%}" if "ranks" in info else ""))
    elif kind == "eval":
        err(f"step {info['step']:>6}  val loss {info['val_loss']:.4f} nats/char ({bits(info['val_loss']):.3f} bits/char,"
            f" unigram entropy {info['entropy']:.3f})" + ("  * best" if info["best"] else ""))
    elif kind == "recipe":
        err(info["text"])
    elif kind == "suggested":
        err("this corpus has many symbols: using " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                             for k, v in info["options"].items())
            + " (`lstm-engine corpus info` suggestions; pass the options to override)")
    elif kind == "sample":
        err(f"--- sample at step {info['step']} ---\n{info['text']}\n---")
    elif kind == "done":
        best = info["best_val"]
        err(f"done at step {info['step']}; latest checkpoint {info['path']}"
            + (f"; best val loss {best:.4f}" if math.isfinite(best) else ""))


_TRAIN = train_defaults()


def train_option(name, help=None, **kw):
    """--NAME for TrainConfig field `name`, with the field's default (a bool: --NAME/--no-NAME)."""
    flag = "--" + name.replace("_", "-")
    default = _TRAIN[name]
    if isinstance(default, bool):
        flag += "/--no-" + flag[2:]
    else:
        kw.setdefault("type", type(default))
    kw.setdefault("show_default", True)
    return click.option(flag, name, default=default, help=help, **kw)


class Duration(click.ParamType):
    """A wall-clock duration (90s, 10m, 2h, 1h30m, 45) -> seconds; the default passes through as it is."""
    name = "text"

    def convert(self, value, param, ctx):
        return value if isinstance(value, float) else parse_duration(value)


@main.command()
@train_option("corpus", "corpus name (`lstm-engine corpus list`) or path to a UTF-8 file")
@train_option("encoding", "text encoding of a corpus file")
@train_option("backend", "numpy | numba | cupy | auto")
@train_option("cell", "the recurrent cell (docs/lstm-walkthrough.md); every other command follows the checkpoint's",
              type=click.Choice(CELLS))
@train_option("embed_size", "embedding size (left out: `corpus info`'s suggestion for corpora of over 256 symbols)")
@train_option("hidden_size")
@train_option("layers")
@train_option("dropout")
@train_option("locked_dropout",
              "one dropout mask per sequence for the whole window (variational dropout), or a new one each step")
@train_option("batch_size")
@train_option("seq_len")
@train_option("lr")
@train_option("lr_decay", "cosine decay to 10% of --lr at --steps")
@train_option("grad_clip", "global-norm clip (0: off)")
@train_option("steps", "total steps of the run (resume counts them)")
@train_option("eval_every")
@train_option("sample_every")
@train_option("save_every")
@train_option("log_every")
@train_option("seed")
@train_option("dtype", type=click.Choice(["float32", "float64"]))
@train_option("max_vocab",
              "keep the N most frequent symbols (0: all; left out: `corpus info`'s suggestion above 256 symbols)")
@train_option("val_fraction")
@train_option("out", "run directory (default runs/run-DATE-TIME)", show_default=False)
@train_option("time_budget", "train the best model that fits this wall-clock time (90s, 10m, 2h): the recipe picks "
                             "size, batch, length, dropout and lr from the measured speed; options you set win",
              type=Duration(), show_default=False)
@train_option("keep", "step-numbered checkpoints to keep besides latest and best")
@train_option("products", "what the matrix products multiply: float32; bf16 (operands rounded to bfloat16, float32 "
                          "sums: the numba backend on CPUs with AVX512_BF16, docs/numba.md); auto: bf16 under "
                          "--time-budget where available and measured faster on this machine, else float32", type=click.Choice(PRODUCTS))
@click.option("--resume", default=None,
              help="checkpoint (or run directory) to continue from; options left out are taken from it")
@click.option("--mpi/--no-mpi", default=None,
              help="train on the ranks of an MPI launch (default: when mpiexec/srun started several; "
                   "docs/distributed.md)")
@click.pass_context
def train(ctx, resume, mpi, **opts):
    """Train a model on a corpus; checkpoints go to --out."""
    from click.core import ParameterSource
    given = {k: v for k, v in opts.items()
             if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
    cfg = api.train_config(given, resume, mpi=mpi)
    trainer = api.prepare_training(cfg, resume=resume, on_event=_print_event, explicit=given)
    got = []
    root = trainer.dist.root

    def request_stop(signum, frame):
        if trainer.stop_requested:          # second Ctrl-C: give up at once (checkpoints stay intact)
            _interrupt(signum, frame)
            return
        trainer.stop_requested = True
        got.append(signum)
        if root:
            err("stopping after this step and saving ...")

    old = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        st = trainer.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if trainer.interrupted:
        if root:
            err(f"interrupted at step {st.step}; checkpoint saved to {trainer.rundir.latest}\n"
                f"resume with: {trainer.dist.launch_prefix()}lstm-engine train --resume {shlex.quote(trainer.out)}")
        sys.exit(128 + (got[0] if got else signal.SIGINT))


@main.command("eval")
@click.argument("checkpoint")
@click.option("--corpus", default=None, help="text to score (default: the val split of the training corpus)")
@click.option("--encoding", default="utf-8", show_default=True)
@click.option("--backend", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON line")
def eval_cmd(checkpoint, corpus, encoding, backend, as_json):
    """Score a text as one stream from a zero state: loss in nats/char and bits/char."""
    r = api.evaluate_checkpoint(checkpoint, corpus, encoding, backend)
    if as_json:
        click.echo(json.dumps(dict(r, checkpoint=checkpoint)))
    else:
        click.echo(f"{r['corpus']}: {r['loss_nats']:.4f} nats/char, {r['bits_per_char']:.4f} bits/char "
                   f"over {r['chars']:,} chars")


@main.command()
@click.argument("checkpoint", required=False)
@click.option("--prime", default="", help="text to start from (echoed to stdout unless --no-echo)")
@click.option("--length", default=500, show_default=True, type=int)
@click.option("--temperature", default=1.0, show_default=True, type=float)
@click.option("--top-k", default=None, type=int, help="sample among the K most likely (default: all)")
@click.option("--top-p", default=1.0, show_default=True, type=float, help="nucleus sampling mass (1: off)")
@click.option("--greedy", is_flag=True, help="always take the most likely character")
@click.option("--seed", default=None, type=int, help="seed for reproducible sampling")
@click.option("--backend", default="auto", show_default=True)
@click.option("--echo/--no-echo", default=True, show_default=True, help="print the prime before the generated text")
@click.option("--products", type=click.Choice(api.SAMPLER_WEIGHTS), default="auto", show_default=True,
              help="the sampler's weights: bf16 rounds a float32 model's weights to bfloat16 (half the bytes "
                   "read a character, float32 sums; the numba backend, docs/numba.md); int8 stores them as "
                   "8-bit codes with a float32 scale per column (a quarter of the bytes); auto: bf16 where the "
                   "model trained with bf16 products, else float32")
def generate(checkpoint, prime, length, temperature, top_k, top_p, greedy, seed, backend, echo, products):
    """Generate text from a checkpoint (default: the latest of the last run), streamed to stdout."""
    model, vocab, path = api.load_for_generation(checkpoint, backend, prime, length, temperature, top_k, top_p,
                                                 seed, products)
    if not checkpoint:
        err(f"using {path}")
    if echo and prime:
        click.echo(prime, nl=False)

    def out(text):
        click.echo(text, nl=False)
        sys.stdout.flush()

    api.generate(model, vocab, prime, length, temperature, top_k, top_p, greedy, seed, on_text=out, keep=False)
    click.echo()


@main.command("export")
@click.argument("checkpoint")
@click.option("--format", "fmt", type=click.Choice(["torch"]), default="torch", show_default=True,
              help="torch: a state dict for nn.Embedding -> nn.LSTM -> nn.Linear (docs/pytorch-interop.md)")
@click.option("-o", "--out", required=True, help="FILE.safetensors, or FILE.pt (needs torch); vocab: FILE.vocab.json")
@click.option("--force", is_flag=True, help="replace an existing checkpoint at -o (never the input or a run's file)")
def export_cmd(checkpoint, fmt, out, force):
    """Write a checkpoint's weights as a PyTorch state dict, with its vocabulary beside it."""
    r = api.export_torch(checkpoint, out, force)
    m = r["config"]
    err(f"wrote {r['path']} (V={m['vocab_size']} E={m['embed_size']} H={m['hidden_size']} L={m['layers']} "
        f"{m['dtype']}) and {r['vocab_path']}")


@main.command("import")
@click.argument("state_dict")
@click.option("--vocab", default=None, help="JSON list of the symbols in index order (default: FILE.vocab.json)")
@click.option("-o", "--out", required=True, help="checkpoint to write (.safetensors)")
@click.option("--force", is_flag=True, help="replace an existing checkpoint at -o (never an input or a run's file)")
def import_cmd(state_dict, vocab, out, force):
    """Make a checkpoint from a PyTorch state dict (.safetensors or .pt) and its vocabulary."""
    r = api.import_torch(state_dict, vocab, out, force)
    m = r["config"]
    err(f"wrote {r['path']} (V={m['vocab_size']} E={m['embed_size']} H={m['hidden_size']} L={m['layers']} "
        f"{m['dtype']})")


@main.command()
@click.option("--backends", default="numpy,numba,cupy,torch", show_default=True,
              help="numpy, numba, cupy and the PyTorch peer: torch (same device as the others), torch-cpu, torch-cuda")
@click.option("--configs", default="tiny,seed,karpathy", show_default=True,
              help="tiny, seed, karpathy, medium, large, or E,H,L,B,T (e.g. 64,128,2,32,50); V=65 unless a config "
                   "ends in V6746 (E128,H256,L2,B32,T50,V6746 or seed,V6746)")
@click.option("--what", default="train,forward,sample", show_default=True,
              help="train, forward, sample; memory: peak resident memory of 12 training steps + the closing "
                   "evaluation, each backend in a fresh process")
@click.option("--cell", default="lstm", show_default=True,
              help="lstm, peephole, coupled, gru (a list); peephole and coupled, which PyTorch lacks, run beside "
                   "the engine's own lstm (vs lstm)")
@click.option("--seconds", default=2.0, show_default=True, type=float, help="timed seconds per measurement")
@click.option("--repeats", default=5, show_default=True, type=int, help="timed repeats (median and spread)")
@click.option("--threads", default=None, type=int, help="BLAS, numba and torch threads (default: as they are)")
@click.option("--json", "json_path", default=None, help="write JSON lines here ('-': stdout)")
@click.option("--plot", "plot_path", default=None, help="write a bar chart PNG here (needs lstm-engine[plot])")
@click.option("--sweep", multiple=True, help="DIM=N,N,... (hidden, batch, embed, layers, seq, vocab): time each size, "
                                             "the rest from each --configs config; repeat for more dimensions")
@click.option("--sweep-out", default="bench-sweep", show_default=True,
              help="with --sweep: write PREFIX.md (tables), PREFIX.json and PREFIX.png (needs lstm-engine[plot])")
def bench(backends, configs, what, cell, seconds, repeats, threads, json_path, plot_path, sweep, sweep_out):
    """Validate each backend against the NumPy reference, then time it.

    \b
    train: forward + BPTT + clip + Adam over B*T chars; forward: loss only;
    sample: batch-1 generation, 1,024 chars a call.  Warm-up is not timed.
    FLOP model per char: forward sum_l 2(I_l+H)G + 2HV (I_0=E, I_l=H;
    G=4H lstm/peephole, 3H coupled/gru), train 3x forward, sample 1x
    forward.  % peak is of the float32 sgemm peak measured in the same
    run; % bound (sample rows on the CPU) of the chars/s at which the
    numba threads read the weights a character needs, at the rate
    measured in the run for that many bytes (the memory-bandwidth
    bound); vs torch is the speed ratio to the PyTorch peer (nn.LSTM or
    nn.GRU on CPU, cuDNN on GPU) on the same device.  A config may end
    in a vocabulary size: E128,H256,L2,B32,T50,V6746 or seed,V6746.
    """
    from lstm_engine.bench import report as bench_report
    from lstm_engine.bench import sweep as bench_sweep
    from lstm_engine.bench.harness import run_bench
    from lstm_engine.bench.machine import machine_line
    outputs = [(json_path, "--json"), (plot_path, "--plot")]
    if sweep:
        bench_sweep.check_options(plot_path, sweep_out)
        outputs += [(f"{sweep_out}.{ext}", "--sweep-out") for ext in ("md", "json", "png")]
    for path, option in outputs:
        if path and path != "-":
            api.check_output_path(path, option)
    if plot_path:
        bench_report.require_matplotlib()
    if sweep:
        machine, rows = bench_sweep.run_sweep(sweep, backends, configs, what, seconds, repeats, threads,
                                              on_progress=err, cell=cell)
    else:
        machine, rows = run_bench(backends, configs, what, seconds, repeats, threads, on_progress=err, cell=cell)
    out = sys.stderr if json_path == "-" else sys.stdout
    click.echo(machine_line(machine), file=out)
    timed = any(r["what"] != "memory" for r in rows)
    if sweep:
        command = shlex.join(["lstm-engine", "bench", "--backends", backends, "--configs", configs, "--what", what,
                              "--cell", cell, "--seconds", str(seconds), "--repeats", str(repeats)]
                             + (["--threads", str(threads)] if threads else [])
                             + [a for s in sweep for a in ("--sweep", s)])
        click.echo(bench_sweep.markdown(machine, rows, command).split("\n", 4)[4], file=out)
    elif timed:
        click.echo(bench_report.format_table(rows), file=out)
        click.echo(bench_report.legend(rows), file=out)
    if any(r["what"] == "memory" for r in rows):
        click.echo(bench_report.format_memory(rows), file=out)
    if json_path:
        bench_report.write_jsonl(rows, json_path)
    if plot_path:
        bench_report.plot(rows, plot_path, title=machine_line(machine))
        err(f"wrote {plot_path}")
    if sweep:
        paths, note = bench_sweep.write_outputs(sweep_out, machine, rows, command)
        err(f"wrote {', '.join(paths)}" + (f"; {note}" if note else ""))


@main.command()
@click.option("--configs", default="seed", show_default=True,
              help="model sizes to tune for: tiny, seed, karpathy, medium, large, or E,H,L,B,T[,V]")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float64"]))
@click.option("--cell", "cells", default="lstm", show_default=True,
              help="cells whose layers' products and sampler team to time, comma-separated: " + ", ".join(CELLS))
def tune(configs, dtype, cells):
    """Choose the numba backend's GEMM per product on this machine, and show why.

    \b
    Every candidate (own: the shipped GEMM, 8x32 register blocks with AVX-512,
    5x16 without; gemm12x32, gemm6x16: other register blockings; blas:
    SciPy's BLAS) is validated against NumPy on
    each product's shape, then timed; the fastest valid one is cached beside
    numba's cache (LSTM_ENGINE_TUNE=auto uses it; off: the shipped GEMM).
    The sampler's one thread or team of threads (the `sample` rows; from
    H = 64 with two or more threads) and a layer's thread plan (the `layer
    plan` rows, where the rule threads it) are timed the same way per config
    (the products and the sampler for each --cell: the GRU's and the coupled
    cell's layers have 3H gate columns, the lstm's and peephole's 4H).
    """
    from lstm_engine.backends import numba_tune
    key, records = api.tune(configs, dtype, on_record=lambda r: err(f"tuned {r['product']} {r['shape']}"),
                            cells=cells)
    click.echo(numba_tune.machine_line(key, numba_tune.tune_file()))
    click.echo(numba_tune.format_table(records))


# ----------------------------------------------------------------------------
# Teaching tools: explain, inspect, plot (through lstm_engine.api; the logic lives in lstm_engine/teaching)
# ----------------------------------------------------------------------------

@main.command()
@click.option("--checkpoint", default=None, help="explain a trained checkpoint instead of a fresh tiny model")
@click.option("--cell", default=None, type=click.Choice(CELLS),
              help="tiny model: the cell to step through (default lstm); a checkpoint explains its own cell")
@click.option("--text", default=None, help="characters to step through (default 'hello'; needed with --checkpoint)")
@click.option("--layer", default=0, show_default=True, type=int, help="which layer of the checkpoint to explain")
@click.option("--input-size", default=2, show_default=True, type=int, help="tiny model: input (embedding) size")
@click.option("--hidden-size", default=3, show_default=True, type=int, help="tiny model: hidden size")
@click.option("--seed", default=0, show_default=True, type=int, help="tiny model: initialisation seed")
@click.option("--backward", is_flag=True, help="continue with BPTT and end with a gradient check")
@click.option("--units", default=None, type=int, help="entries of each H-sized vector to show (default: all up to 8)")
@click.option("--max-check", default=64, show_default=True, type=int,
              help="gradient check: entries per parameter (a seeded sample beyond that)")
@click.option("--format", "fmt", default="text", show_default=True, type=click.Choice(["text", "markdown", "html"]))
@click.option("--interactive", is_flag=True, help="wait for Enter between blocks (q + Enter stops)")
@click.option("-o", "--output", default=None, help="write to this file instead of stdout")
def explain(checkpoint, cell, text, layer, input_size, hidden_size, seed, backward, units, max_check, fmt, interactive,
            output):
    """Step through one layer of a cell with real numbers: gates, state, loss (and BPTT with --backward)."""
    if interactive and (fmt == "html" or output):
        raise UserError("--interactive prints to the terminal; drop it for --format html or --output")
    chunks = api.explain(checkpoint, text, layer, input_size, hidden_size, seed, backward, units, max_check, fmt,
                         output, cell)
    if output:
        err(f"wrote {output}")
        return
    for k, chunk in enumerate(chunks):
        click.echo(chunk)
        if interactive and k < len(chunks) - 1:
            err("[Enter: next block, q: quit] ")
            line = sys.stdin.readline()
            if not line:                     # end of input: print the rest without waiting
                interactive = False
            elif line.strip().lower() == "q":
                break


@main.command("inspect")
@click.argument("checkpoint")
@click.option("--text", "text_file", default=None, help="file whose text the model reads")
@click.option("--prime", default=None, help="the text itself, given on the command line")
@click.option("--encoding", default="utf-8", show_default=True)
@click.option("--layer", default=None, type=int, help="only this layer (default: all; --unit: the last)")
@click.option("--unit", default=None, type=int, help="colour the text by this unit")
@click.option("--state", "kind", default="h", show_default=True,
              type=click.Choice(["h", "c", "i", "f", "g", "o", "r", "z", "n"]),
              help="h, c and the gates (i f g o; coupled f g o); a GRU has h, r, z, n")
@click.option("--rank", default=None, help="feature to rank units by: quotes, brackets, depth, line-pos, "
                                           "after-newline, space, alpha, upper, digit, punct, vowel, char:X")
@click.option("--top", default=5, show_default=True, type=int, help="units to show")
@click.option("--max-chars", default=4000, show_default=True, type=int, help="read at most this many characters")
@click.option("--html", "out_html", required=True, help="page to write (OUT.html)")
def inspect_cmd(checkpoint, text_file, prime, encoding, layer, unit, kind, rank, top, max_chars, out_html):
    """Colour a text by what single cells do; --rank finds the units that track a feature."""
    from lstm_engine.teaching.inspect_cells import FEATURES
    res = api.inspect_cells(checkpoint, out_html, text=prime, text_file=text_file, encoding=encoding, layer=layer,
                            unit=unit, kind=kind, rank=rank, top=top, max_chars=max_chars)
    rows = res["ranking"]
    if rows and rank:
        click.echo(f"units ranked by correlation with {rank!r} ({kind}, {res['chars']:,} chars):")
        for k, (r, l, u) in enumerate(rows):
            click.echo(f"  #{k + 1}  layer {l}  unit {u:>4}  r = {r:+.3f}")
    elif rows:
        for r, l, u, feat in rows:
            click.echo(f"  layer {l}  unit {u:>4}  r = {r:+.3f}  {FEATURES[feat]}")
    err(f"wrote {out_html}")


@main.command()
@click.argument("run_dir")
@click.option("-o", "--output", default="loss.png", show_default=True, help="image to write (.png, .svg, .pdf)")
@click.option("--title", default=None)
def plot(run_dir, output, title):
    """Plot a run's train and val loss (nats and bits per char) against steps and wall time."""
    api.plot_run(run_dir, output, title)
    err(f"wrote {output}")


@main.command()
@click.argument("checkpoint", required=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (anything but a loopback address prints a warning)")
@click.option("--port", default=0, type=int, help="port to listen on (default: a free one)")
@click.option("--html", "out_html", default=None, help="write a self-contained page for --text instead of serving")
@click.option("--text", default=None, help="with --html: the text whose numbers the page holds (2 to 200 characters)")
def explore(checkpoint, host, port, out_html, text):
    """Step a trained model through your text in the browser: gates, c, h, units, influence (docs/explorer.md)."""
    if out_html:
        r = api.explore_html(checkpoint, out_html, text)
        err(f"wrote {r['path']} ({r['chars']} characters, {r['bytes']:,} bytes)")
        return
    srv, warning = api.explore_server(checkpoint, host, port, text)
    if warning:
        err(f"warning: {warning}")
    if not checkpoint:
        err(f"using {srv.checkpoint}")
    click.echo(srv.url)
    sys.stdout.flush()
    err("serving the explorer at that address; Ctrl-C stops it")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        err("stopped")
    finally:
        srv.server_close()


@main.group()
def corpus():
    """List, fetch and describe corpora (the names --corpus accepts)."""


def _size(n, unit=""):
    return "-" if n is None else f"{n / 1e6:.1f} M{unit}" if n >= 1e6 else f"{n / 1e3:.0f} k{unit}"


@corpus.command("list")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per corpus")
def corpus_list(as_json):
    """Name, language, size and cache status of every known corpus."""
    rows = corpora.listing()
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, ensure_ascii=False))
        return
    click.echo(f"{'NAME':<16} {'LANGUAGE':<28} {'CHARS':>8} {'DOWNLOAD':>9}  STATUS")
    for r in rows:
        click.echo(f"{r['name']:<16} {r['language']:<28} {_size(r['chars']):>8} "
                   f"{_size(r['download_bytes'], 'B'):>9}  {r['status']}")
    click.echo(f"cache: {corpora.cache_dir()}")


@corpus.command("fetch")
@click.argument("name")
@click.option("--from", "from_path", default=None,
              help="use a local copy of the source file(s): the file, or a folder holding them")
@click.option("--force", is_flag=True, help="convert again even if the corpus is cached")
def corpus_fetch(name, from_path, force):
    """Download (or copy --from), verify and convert corpus NAME into the cache; print its path."""
    click.echo(corpora.fetch(name, from_path=from_path, force=force))


_INFO_LINES = (("description", "{}"), ("language", "{}"), ("license", "{}"), ("origin", "{}"), ("rule", "{}"),
               ("download_bytes", "{:,} bytes"), ("path", "{}"), ("chars", "{:,}"), ("symbols", "{:,}"),
               ("lines", "{:,}"), ("entropy_bits", "{:.3f} bits/char"))
_INFO_LABELS = {"download_bytes": "download", "symbols": "distinct symbols", "entropy_bits": "unigram entropy"}


@corpus.command("info")
@click.argument("name_or_path")
@click.option("--encoding", default="utf-8", show_default=True, help="text encoding of a file")
@click.option("--sources", is_flag=True, help="list the source URLs, sizes and sha256 only (no download)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def corpus_info(name_or_path, encoding, sources, as_json):
    """Figures of a corpus or any UTF-8 file: size, symbols, unigram entropy, suggested settings."""
    d = corpora.describe(name_or_path, encoding, with_text=not sources)
    if as_json:
        click.echo(json.dumps(d, ensure_ascii=False))
    elif sources:
        for s in d.get("sources", []):
            click.echo(f"{s['url']}  {s['bytes']}  {s['sha256']}")
    else:
        for key, fmt in _INFO_LINES:
            if key in d:
                click.echo(f"{_INFO_LABELS.get(key, key)}: {fmt.format(d[key])}")
        if d["chars"]:
            mv = d["max_vocab"]
            click.echo(f"suggested: --max-vocab {mv} ("
                       + (f"{mv - 1:,} symbols seen at least {corpora.MIN_COUNT} times + <unk>, covering "
                          f"{d['coverage']:.2%} of the text)" if mv else "keep every symbol)")
                       + f" --embed-size {d['embed_size']}")


if __name__ == "__main__":
    main()
