"""One line while numba compiles for long: the first run of a version on a machine.

A cold numba cache compiles the kernels a run uses before its first step (minutes on a 2-core
machine: docs/numba.md, "The cache and compile times"), and nothing else is printed meanwhile.
`enable(say)` (the CLI, where stderr is a terminal) arms a listener on numba's compile events
when the kernels first load: once one compile has run for DELAY_S seconds, `say` gets MESSAGE,
once per process.  A compile that ends sooner prints nothing, and loading machine code from the
cache is not a compile.
"""
from __future__ import annotations

import threading

DELAY_S = 10.0
MESSAGE = ("numba is compiling the kernels for this CPU: the first run of this version on this machine takes "
           "minutes; later runs load them from numba's cache")

_say = [None]          # the printer enable() was given, or None: off


def enable(say):
    """Print MESSAGE through say(line) when a compile runs long (see the module docstring)."""
    _say[0] = say


def install():
    """Arm the listener if enable() was called (numba_backend._kernels, when the kernels first load)
    -> the listener, or None."""
    if _say[0] is None:
        return None
    from numba.core import event

    class Listener(_Timing, event.Listener):
        pass

    listener = Listener(_say[0], DELAY_S)
    event.register("numba:compile", listener)
    return listener


class _Timing:
    """numba:compile events: a timer from the start of an outermost compile, stopped at its end
    (numba reports nested compiles, of the callees, inside their caller's)."""

    def __init__(self, say, delay_s):
        self.say, self.delay_s = say, delay_s
        self.depth, self.timer, self.said = 0, None, False
        self.lock = threading.Lock()

    def on_start(self, event):
        with self.lock:
            self.depth += 1
            if self.depth == 1 and not self.said:
                self.timer = threading.Timer(self.delay_s, self._fire)
                self.timer.daemon = True
                self.timer.start()

    def on_end(self, event):
        with self.lock:
            self.depth -= 1
            if self.depth == 0 and self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def _fire(self):
        with self.lock:
            if self.depth == 0 or self.said:
                return
            self.said = True
        self.say(MESSAGE)
