"""Per-kernel micro-benchmarks: validate each version of a kernel against the NumPy reference, then time it.

    python benchmarks/dev/micro.py --kernels lstm_forward,adam_update --configs seed --seconds 1

Kernels: lstm_forward (gate-forward), lstm_backward (gate-backward), softmax_xent (softmax-xent),
adam_update (adam), generate (sample-step).  Candidates: each requested backend's own function,
and every version of the experiments under benchmarks/dev/<backend>/*.py: a module there
exports KERNEL_VERSIONS = {kernel: {version: fn}} (fn with the backend function's signature)
and runs on the backend its folder names (or its BACKEND attribute).  The experiments are
loaded by path here; lstm_engine never imports them.  The validate-then-time harness is
lstm_engine/bench/kernels.py.
"""
import importlib.util
import json
import sys
from pathlib import Path

import click

from lstm_engine.bench.kernels import format_micro, run_micro
from lstm_engine.bench.machine import machine_info, machine_line, thread_settings
from lstm_engine.errors import UserError

DEV = Path(__file__).resolve().parent


def load_versions(root=DEV):
    """-> ([(label, backend, KERNEL_VERSIONS)], [(label, why skipped)]) from root/<backend>/*.py,
    each module loaded by path (as dev_<backend>_<name>, once per process); one that fails to
    import (a missing GPU library) is skipped with the reason."""
    found, skipped = [], []
    for path in sorted(Path(root).glob("*/*.py")):
        if path.name.startswith("_"):
            continue
        label = f"{path.parent.name}_{path.stem}"
        try:
            mod = sys.modules.get(f"dev_{label}") or _load(path, f"dev_{label}")
        except Exception as e:
            skipped.append((label, f"{type(e).__name__}: {e}"))
            continue
        versions = getattr(mod, "KERNEL_VERSIONS", None)
        if isinstance(versions, dict):
            found.append((label, getattr(mod, "BACKEND", None) or path.parent.name, versions))
    return found, skipped


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


@click.command()
@click.option("--kernels", default="", help="comma list (default: all five)")
@click.option("--configs", default="seed", show_default=True, help="tiny, seed, karpathy, medium, large or E,H,L,B,T")
@click.option("--backends", default="", help="comma list of backends (default: every available one)")
@click.option("--seconds", default=1.0, show_default=True, type=float, help="timed seconds per candidate")
@click.option("--repeats", default=5, show_default=True, type=int)
@click.option("--threads", default=None, type=int, help="BLAS and numba threads (default: as they are)")
@click.option("--json", "json_path", default=None, help="write JSON lines here")
def main(kernels, configs, backends, seconds, repeats, threads, json_path):
    """Validate, then time, every version of each kernel."""
    modules, skipped = load_versions()
    try:
        with thread_settings(threads):
            rows, notes = run_micro(kernels, configs, backends, seconds, repeats, modules=modules)
            machine = machine_info(threads)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(machine_line(machine))
    click.echo(format_micro(rows))
    for n in [f"experiment {m} skipped: {why}" for m, why in skipped] + notes:
        click.echo(f"note: {n}")
    if json_path:
        with open(json_path, "w") as f:
            for r in rows:
                f.write(json.dumps(dict(r, **machine), sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
