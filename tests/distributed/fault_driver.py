"""`lstm-engine train ARGS` on every rank, one rank failing: python fault_driver.py RANK:STEP:KIND ARGS...

KIND raise: that rank raises RuntimeError when it starts step STEP; kill: it SIGKILLs itself there;
setup: that rank alone fails to set up (a UserError while the trainer is made; STEP unused).
The moment of the fault goes to FAULT_AT (a file named by the environment) so the test can time the stop.
"""
import os
import signal
import sys
import time

from lstm_engine.cli import main
from lstm_engine.core.train import Trainer
from lstm_engine.errors import UserError

rank, step, kind = sys.argv[1].split(":")
original = Trainer.train_step


def train_step(self):
    if self.dist.rank == int(rank) and self.st.step + 1 == int(step):
        with open(os.environ["FAULT_AT"], "w") as f:
            f.write(repr(time.time()))
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("injected fault")
    return original(self)


def init(self, *args, **kwargs):
    if os.environ.get("PMI_RANK") == rank:
        raise UserError("the corpus is not readable on this machine")
    original_init(self, *args, **kwargs)


original_init = Trainer.__init__
Trainer.train_step = train_step
if kind == "setup":
    Trainer.__init__ = init
main(sys.argv[2:])
