"""Helpers of the hostile-input tests: crafted checkpoints with a valid digest, a hang guard, a tiny run."""
import contextlib
import json
import os
import signal

import numpy as np
from safetensors.numpy import save

from lstm_engine.storage import checkpoint

from helpers import run_cli, tiny_args, write_corpus


def craft(tensors, meta):
    """Checkpoint bytes holding `meta` as given (NaN and Infinity included) with a digest that matches:
    what an attacker who read the format can write."""
    meta_json = json.dumps(meta, allow_nan=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    names = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}
    desc = {k: (names[a.dtype], a.shape, a.tobytes()) for k, a in arrays.items()}
    return save(arrays, metadata={"lstm_engine": meta_json, "lstm_engine_sha256": checkpoint._digest(meta_json, desc)})


class Hang(BaseException):          # not an Exception: code under test that catches those cannot swallow it
    pass


@contextlib.contextmanager
def deadline(seconds):
    """Fail (instead of hanging the suite) when the body runs longer than `seconds`."""
    def fire(signum, frame):
        raise Hang(f"still running after {seconds} s: a hang")
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def tiny_run(d, steps=4, **kw):
    """A finished tiny CLI run in d/run with checkpoints at steps 2 and 4 -> (corpus path, run dir)."""
    corpus = write_corpus(d)
    out = d / "run"
    args = tiny_args(corpus, out, steps=steps, save_every=2, eval_every=2, **kw)
    r = run_cli(args, env={"LSTM_ENGINE_STATE_DIR": str(d / "state")})
    assert r.exit_code == 0, r.output
    return corpus, str(out)


def files_of(d):
    """{name: bytes} of the plain files directly in d (what a command must leave as it was)."""
    out = {}
    for n in sorted(os.listdir(d)):
        p = os.path.join(d, n)
        if os.path.isfile(p) and not os.path.islink(p):
            with open(p, "rb") as f:
                out[n] = f.read()
    return out
