"""Per-kernel micro-benchmarks: validate each version of a kernel against the NumPy reference, then time it.

    python benchmarks/micro.py --kernels lstm_forward,adam_update --configs seed --seconds 1

Kernels: lstm_forward (gate-forward), lstm_backward (gate-backward), softmax_xent (softmax-xent),
adam_update (adam), generate (sample-step).  Candidates: each available backend's own function and
every version in a kernels module's KERNEL_VERSIONS (see lstm_engine/bench_kernels.py).
"""
import json
import sys

import click

from lstm_engine.bench.kernels import format_micro, run_micro
from lstm_engine.bench.machine import machine_info, machine_line, thread_settings
from lstm_engine.errors import UserError


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
    try:
        with thread_settings(threads):
            rows, notes = run_micro(kernels, configs, backends, seconds, repeats)
            machine = machine_info(threads)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(machine_line(machine))
    click.echo(format_micro(rows))
    for n in notes:
        click.echo(f"note: {n}")
    if json_path:
        with open(json_path, "w") as f:
            for r in rows:
                f.write(json.dumps(dict(r, **machine), sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
