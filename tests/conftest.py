import os
import sys

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_session_state(tmp_path_factory):
    """The same for module- and session-scoped fixtures, which run before the per-test one below."""
    base = tmp_path_factory.mktemp("session")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LSTM_ENGINE_STATE_DIR", str(base / "state"))
        mp.setenv("LSTM_ENGINE_CACHE", str(base / "cache"))
        mp.setenv("LSTM_ENGINE_TUNE", "off")
        mp.setenv("LSTM_ENGINE_TUNE_FILE", str(base / "tune.json"))
        yield


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    """Keep the 'last run' pointer and download cache of tests away from the user's."""
    monkeypatch.setenv("LSTM_ENGINE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LSTM_ENGINE_CACHE", str(tmp_path / "cache"))
    # the numba backend's fixed kernels unless a test turns tuning on (tests/backends/test_numba_tune.py)
    monkeypatch.setenv("LSTM_ENGINE_TUNE", "off")
    monkeypatch.setenv("LSTM_ENGINE_TUNE_FILE", str(tmp_path / "tune.json"))
    yield
    tune = sys.modules.get("lstm_engine.backends.numba_tune")
    if tune is not None:
        tune.set_products(None)             # a run's --products bf16 holds for its process: not past its test


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def shared_corpus(name):
    """Path of a corpus in ../shared/corpora beside the checkout, or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    p = os.path.join(here, "..", "..", "shared", "corpora", name)
    return p if os.path.exists(p) else None


def pytest_terminal_summary(terminalreporter):
    """The llm.c-style `... parity: ... overall okay` lines of tests/parity.py, when a test used it."""
    parity = sys.modules.get("parity")
    if parity is not None:
        parity.summary(terminalreporter)
