"""`lstm-engine train ARGS` on every rank, one rank failing: python fault_driver.py RANK:STEP:KIND ARGS...

KIND raise: that rank raises RuntimeError when it starts step STEP; kill: it SIGKILLs itself there.
The moment of the fault goes to FAULT_AT (a file named by the environment) so the test can time the stop.
"""
import os
import signal
import sys
import time

from lstm_engine.cli import main
from lstm_engine.core.train import Trainer

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


Trainer.train_step = train_step
main(sys.argv[2:])
