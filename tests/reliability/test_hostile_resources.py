"""Resources: a --time-budget shorter than the calibration needs, and an explain --max-check
whose gradient check would run for hours."""
import math
import re

import pytest

import lstm_engine as le
from lstm_engine.core import budget
from lstm_engine.errors import UserError
from lstm_engine.teaching import explain as ex

from helpers import assert_one_line_error, markov_text, run_cli, write_corpus
from hostile_helpers import deadline


# -- --time-budget ----------------------------------------------------------------------------------

def test_a_budget_shorter_than_the_calibration_is_refused_before_training(tmp_path, monkeypatch):
    """One line naming the option and a minimum in seconds above the budget; no step, nothing written."""
    def no_step(self):
        raise AssertionError("a training step ran under a budget that cannot hold one")
    monkeypatch.setattr(le.Trainer, "train_step", no_step)
    out = tmp_path / "run"
    with deadline(120):
        r = run_cli(["train", "--corpus", write_corpus(tmp_path), "--backend", "numpy", "--time-budget", "0.05s",
                     "--out", out, "--log-every", "0"])
    assert_one_line_error(r, "--time-budget")
    minimum = int(re.search(r"at least (\d+)s", r.stderr).group(1))
    assert minimum >= 1 and f"--time-budget {minimum}s or more" in r.stderr
    assert not out.exists()


def test_the_minimum_counts_calibration_steps_and_the_closing_reserve():
    """The budget must hold what was spent, MIN_TRAIN_STEPS steps and the reserve; the minimum is rounded up."""
    spent, reserve, step = 1.3, 2.1, 0.05
    need = spent + budget.MIN_TRAIN_STEPS * step + reserve
    budget.check_minimum(need, spent, reserve, step)                   # exactly enough
    with pytest.raises(UserError, match=rf"at least {math.ceil(need)}s .*--time-budget {math.ceil(need)}s or more"):
        budget.check_minimum(need - 0.01, spent, reserve, step)


def test_a_budget_that_fits_still_trains(tmp_path):
    """A budget comfortably above the minimum is not refused: the check does not stop ordinary runs."""
    cfg = le.TrainConfig(backend="numpy", time_budget=8.0, out=str(tmp_path / "run"), log_every=0)
    with deadline(60):
        st = le.Trainer(cfg, text=markov_text(1500)).run()
    assert st.step >= budget.MIN_TRAIN_STEPS


# -- explain --max-check ----------------------------------------------------------------------------

def test_max_check_beyond_the_work_bound_is_refused_with_the_range(monkeypatch):
    """A model large enough that checking every entry exceeds the bound: values above the largest that
    fits are refused naming --max-check and its range; that largest value and the default are accepted."""
    monkeypatch.setattr(ex, "MAX_CHECK_WORK", 1e9)
    setup = ex.tiny_setup("hello there", input_size=8, hidden_size=64)
    with pytest.raises(UserError) as e:
        ex.explain(setup, backward=True, max_check=10 ** 12)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--max-check must be in 1..")
    top = int(re.search(r"1\.\.(\d+)", msg).group(1))
    assert 1 <= top < max(p.size for p in setup.params.values())
    ex.check_max_check(setup, top)
    with pytest.raises(UserError, match=r"--max-check must be in 1\.\."):
        ex.check_max_check(setup, top + 1)
    ex.check_max_check(setup, 10 ** 12, backward=False)           # no gradient check, nothing to bound


def test_max_check_from_the_cli_is_one_line_and_never_hangs():
    with deadline(60):                      # checking every entry of this model would run for a long time
        r = run_cli(["explain", "--input-size", "64", "--hidden-size", "512", "--text", "hello there, friend",
                     "--backward", "--max-check", str(10 ** 9)])
    assert_one_line_error(r, "--max-check must be in 1..")
    for bad in ("0", "-5"):
        assert_one_line_error(run_cli(["explain", "--backward", "--max-check", bad]), "--max-check")


def test_a_max_check_above_every_size_of_a_small_model_checks_every_entry():
    """On a small model a huge value is the same as checking every entry (capped, not refused)."""
    setup = ex.tiny_setup("hello", input_size=2, hidden_size=3)
    rows = ex.explain(setup, backward=True, max_check=10 ** 18)[-1].items[1][2]
    assert all(r[2].split("/")[0] == r[2].split("/")[1] for r in rows), rows
