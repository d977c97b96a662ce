"""The one-line notice while numba compiles for long (lstm_engine/backends/numba_notice.py)."""
import time

import pytest

pytest.importorskip("numba")
from numba.core import event  # noqa: E402

from lstm_engine.backends import numba_notice  # noqa: E402


@pytest.fixture
def armed(monkeypatch):
    """The listener installed with a short delay, its lines collected; removed afterwards."""
    lines = []
    monkeypatch.setattr(numba_notice, "DELAY_S", 0.2)
    monkeypatch.setattr(numba_notice, "_say", [None])
    numba_notice.enable(lines.append)
    listener = numba_notice.install()
    yield lines
    event.unregister("numba:compile", listener)


def compile_event(seconds, nested=0):
    """numba's compile event around `seconds` of work, with `nested` callee compiles inside it."""
    with event.trigger_event("numba:compile", data={}):
        for _ in range(nested):
            with event.trigger_event("numba:compile", data={}):
                time.sleep(seconds / (2 * nested))
        time.sleep(seconds if not nested else seconds / 2)


def test_a_long_compile_says_so_once(armed):
    compile_event(0.01)
    time.sleep(0.4)
    assert armed == []                                   # a quick compile (or a cache load) says nothing
    compile_event(1.0, nested=2)
    assert armed == [numba_notice.MESSAGE]
    compile_event(1.0)
    assert armed == [numba_notice.MESSAGE]               # once per process


def test_quick_compiles_in_a_row_say_nothing(armed):
    for _ in range(10):
        compile_event(0.01, nested=1)
    time.sleep(0.4)
    assert armed == []


def test_not_enabled_installs_nothing(monkeypatch):
    monkeypatch.setattr(numba_notice, "_say", [None])
    assert numba_notice.install() is None
