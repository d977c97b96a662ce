"""Training to a wall-clock budget: duration parsing, a schedule measured in time, and the recipe.

`lstm-engine train --time-budget 10m` trains the best model it can in ten minutes on this machine:
the recipe picks model size, batch, sequence length, dropout and learning rate from the budget, the corpus
size and the measured speed of the backend; any option the user sets explicitly wins.
"""
from __future__ import annotations

import math
import re

from ..errors import UserError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text):
    """'90s', '10m', '2h', '1h30m', '45' (seconds) -> seconds (float > 0)."""
    s = str(text).strip().lower()
    try:
        value = float(s)
    except ValueError:
        parts = re.fullmatch(r"((?:\d+(?:\.\d+)?[smh])+)", s)
        if not parts:
            raise UserError(f"--time-budget {text!r} is not a duration; write e.g. 90s, 10m, 2h or 1h30m") from None
        value = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smh])", s))
    if not value > 0:
        raise UserError(f"--time-budget must be positive (got {text!r})")
    return value


def lr_at_time(frac, base_lr, warmup=0.02, floor=0.05):
    """Learning rate at fraction `frac` (0..1) of the budget: linear warm-up, then cosine down to floor*lr."""
    frac = min(max(frac, 0.0), 1.0)
    if frac < warmup:
        return base_lr * (0.1 + 0.9 * frac / warmup)
    x = (frac - warmup) / (1.0 - warmup)
    return base_lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * x)))


# Candidate models, smallest first: (embed, hidden, layers, batch, seq_len, dropout, lr); windows,
# dropout and lr tuned by ten-minute runs on tinyshakespeare (docs/time-budget.md, 'Why these settings');
# H192 is where a CPU too slow for H256's updates lands, not a halving to H128.
CANDIDATES = (
    (16, 32, 1, 16, 32, 0.0, 3e-3),
    (32, 64, 2, 32, 64, 0.0, 3e-3),
    (32, 128, 2, 32, 64, 0.0, 3e-3),
    (64, 192, 2, 64, 50, 0.2, 3e-3),
    (64, 256, 2, 64, 50, 0.2, 3e-3),
    (64, 320, 2, 64, 50, 0.25, 3e-3),
    (64, 384, 2, 64, 50, 0.25, 3.5e-3),
    (64, 448, 2, 64, 50, 0.25, 2.5e-3),
    (64, 512, 2, 64, 50, 0.25, 2e-3),
    (96, 768, 2, 64, 50, 0.3, 1.5e-3),
)
# The recipe wants the model to see at least this many training characters per parameter: past
# about 3.5, a larger model beats more passes over the data (docs/time-budget.md, 'Why these settings').
CHARS_PER_PARAM = 3.5
# ... and to make at least MIN_UPDATES Adam updates, or UPDATES_PER_MINUTE per minute of a shorter
# budget: a larger model with too few updates scores worse, and a flat minimum would push short
# budgets to too small a model (docs/time-budget.md, 'Why these settings').
MIN_UPDATES = 3500
UPDATES_PER_MINUTE = 400
# A candidate whose measured speed reaches at least this fraction of what the rules above ask is
# timed once more and keeps its faster figure: the host's speed moves within minutes, and
# one slow minute should not decide between neighbouring models (docs/time-budget.md).
RETRY_WITHIN = 0.85
# A budget must hold at least this many training steps besides the calibration and the closing
# evaluation and saves: fewer leave a model that has learned nothing worth saving.
MIN_TRAIN_STEPS = 10


def n_params(V, E, H, L, cell="lstm"):
    from .model import cell_param_shapes
    layers = sum(math.prod(s) for l in range(L) for s in cell_param_shapes(cell, E if l == 0 else H, H).values())
    return V * E + layers + H * V + V


def choose(budget_s, train_chars, vocab_size, speed_of, window_of=None, warmup_s=None, cell="lstm"):
    """Pick the candidate that best fits the budget.

    speed_of(candidate) -> measured training chars/s on this backend; window_of(candidate) -> the
    characters of one update (B*T; default: the candidate's own); warmup_s() -> seconds spent so far in
    the candidates' warm-up steps (JIT compile on a first run), which the 5% cap on calibration
    does not count: a compile is paid once per install, and stopping on it would pick a smaller model
    only on the first run.  The chosen model is the largest
    whose training (at its measured speed, over ~85% of the budget) sees at least CHARS_PER_PARAM
    characters per parameter and makes at least MIN_UPDATES optimizer updates (UPDATES_PER_MINUTE per
    minute of a shorter budget); it is never larger than the data can support (4 chars per
    parameter per pass over the corpus is the floor).
    -> (candidate, speed, reasons list of str)
    """
    import time
    window_of = window_of or (lambda cand: cand[3] * cand[4])
    train_time = 0.85 * budget_s
    min_updates = min(MIN_UPDATES, UPDATES_PER_MINUTE * budget_s / 60)
    chosen, chosen_speed, reasons = CANDIDATES[0], None, []
    t0 = time.perf_counter()
    for cand in CANDIDATES:
        spent = time.perf_counter() - t0 - (warmup_s() if warmup_s else 0.0)
        if chosen_speed is not None and spent > 0.05 * budget_s:
            reasons.append("calibration stopped at 5% of the budget")
            break
        E, H, L, B, T, _, _ = cand
        p = n_params(vocab_size, E, H, L, cell)
        if p > 4 * train_chars and chosen_speed is not None:
            reasons.append(f"H{H}: {p:,} params is too many for {train_chars:,} training chars")
            break
        speed = speed_of(cand)
        share = _share(speed, train_time, p, window_of(cand), min_updates)
        if RETRY_WITHIN <= share < 1:
            first, speed = speed, max(speed, speed_of(cand))
            reasons.append(f"H{H}: {first:,.0f} chars/s, near the rules: measured again")
            share = _share(speed, train_time, p, window_of(cand), min_updates)
        seen = speed * train_time
        reasons.append(f"H{H}: {speed:,.0f} chars/s -> {seen / p:.1f} chars/param, {seen / window_of(cand):,.0f} "
                       f"updates")
        fits = share >= 1
        if fits or chosen_speed is None:
            chosen, chosen_speed = cand, speed
        if not fits:
            break
    return chosen, chosen_speed, reasons


def _share(speed, train_time, p, window, min_updates):
    """The smaller of (training chars / CHARS_PER_PARAM p) and (updates / min_updates) at this speed:
    1 or more fits the rules."""
    seen = speed * train_time
    return min(seen / (CHARS_PER_PARAM * p), seen / window / min_updates)


def nearest_candidate(hidden_size):
    """The candidate whose hidden size is nearest to hidden_size by ratio (the smaller on a tie): a
    given --hidden-size takes the batch, window, dropout and lr tuned for a model of about its size."""
    return min(CANDIDATES, key=lambda c: (abs(math.log(c[1] / hidden_size)), c[1]))


def check_minimum(budget_s, spent_s, reserve_s, step_s):
    """UserError, before the first step, when budget_s cannot hold what the run has already spent
    (reading the corpus, the calibration with any JIT compile: spent_s), MIN_TRAIN_STEPS steps of
    step_s seconds and the closing evaluation and saves (reserve_s); it names the minimum in seconds."""
    need = spent_s + MIN_TRAIN_STEPS * step_s + reserve_s
    if budget_s >= need:
        return
    minimum = math.ceil(need)
    raise UserError(f"--time-budget {budget_s:g}s is shorter than this run needs on this machine: at least "
                    f"{minimum}s ({spent_s:.1f}s setup and calibration, {MIN_TRAIN_STEPS} training steps of "
                    f"{step_s:.2g}s, {reserve_s:.1f}s closing evaluation and saves); pass --time-budget {minimum}s "
                    f"or more, or --steps N instead")


# --------------------------------------------------------------------------
# Planning a budgeted run
# --------------------------------------------------------------------------
RECIPE_FIELDS = ("embed_size", "hidden_size", "layers", "batch_size", "seq_len", "dropout", "lr")


def measure_train_speed(backend, vocab_size, cand, dtype, train_ids, steps=4, locked_dropout=True, cell="lstm"):
    """chars/s of whole training steps (forward, BPTT, clip, Adam) for a candidate, after one warm-up.
    -> (chars/s, one-time seconds: the backend's first-use tuning of this model's products as
        compile_ahead starts, and the warm-up step beyond a steady step: JIT compile, first touches)"""
    import time

    import numpy as np

    from ..backends import compile_ahead
    from .data import Batcher
    from .model import Model, ModelConfig
    from .optim import Adam, AdamConfig
    E, H, L, B, T, p, lr = cand
    model = Model(ModelConfig(vocab_size, E, H, L, p, dtype, cell), backend, seed=0)
    opt = Adam(model.params, backend, AdamConfig(lr))
    b = Batcher(train_ids, B, T)
    rng = np.random.default_rng(0)
    times = []
    t0 = time.perf_counter()
    ahead = compile_ahead(backend, model.cfg, B, T)        # asks the tuner first: once per machine and shape
    tuned_s = time.perf_counter() - t0
    with ahead:
        for k in range(steps + 1):
            x, y = b.window(k % b.windows)
            t0 = time.perf_counter()
            loss, grads, _ = model.forward_backward(backend.asarray(x), backend.asarray(y), model.zero_state(B),
                                                    model.dropout_masks(T, B, rng, locked=locked_dropout))
            _, scale = opt.clip_scale(grads)
            opt.update(model.params, grads, lr, scale)
            backend.synchronize()
            times.append(time.perf_counter() - t0)
    return B * T / min(times[1:]), tuned_s + max(times[0] - min(times[1:]), 0.0)


def plan(cfg, explicit, train_ids, vocab_size, backend, say=print):
    """Fill the recipe's choices into cfg (a TrainConfig) for a run of cfg.time_budget seconds.

    Options in `explicit` (names of TrainConfig fields the user set) are never changed.  A given
    hidden size sets the model's size: the other fields come from the candidate nearest to it.
    -> (the recipe as text: printed at start and stored in the checkpoint as cfg.recipe,
        the measured training speed of the chosen settings in chars/s)
    """
    fixed = {k: getattr(cfg, k) for k in RECIPE_FIELDS if k in explicit}

    def with_fixed(cand):
        return tuple(fixed.get(k, v) for k, v in zip(RECIPE_FIELDS, cand))

    warm = [0.0]

    def speed_of(cand):
        speed, warm_s = measure_train_speed(backend, vocab_size, with_fixed(cand), cfg.dtype, train_ids,
                                            locked_dropout=cfg.locked_dropout, cell=cfg.cell)
        warm[0] += warm_s
        return speed

    if "hidden_size" in fixed:
        base = nearest_candidate(fixed["hidden_size"])
        cand = with_fixed(base)
        speed, reasons = speed_of(base), [f"model size set by options; the rest from the H{base[1]} candidate"]
    else:
        cand, speed, reasons = choose(cfg.time_budget, len(train_ids), vocab_size, speed_of,
                                      window_of=lambda c: with_fixed(c)[3] * with_fixed(c)[4],
                                      warmup_s=lambda: warm[0], cell=cfg.cell)
        cand = with_fixed(cand)
    for k, v in zip(RECIPE_FIELDS, cand):
        setattr(cfg, k, v)
    if "lr_decay" not in explicit:
        cfg.lr_decay = True
    chosen = ", ".join(f"{k}={getattr(cfg, k)}" + ("" if k not in fixed else " (given)") for k in RECIPE_FIELDS)
    products = " with bfloat16 products" if getattr(cfg, "products", "") == "bf16" else ""
    text = (f"time budget {cfg.time_budget:g}s on {backend.NAME}{products}: {chosen}; warm-up then cosine decay over the "
            f"budget's time; measured {speed:,.0f} chars/s ({'; '.join(reasons)})")
    say(text)
    return text, speed
