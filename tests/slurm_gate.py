"""A `train.launcher` for tests/test_slurm.py that holds a run in the middle of iteration 2.

    train.launcher="python tests/slurm_gate.py"   ->   python tests/slurm_gate.py -m selm.train --config <file>

With SELM_TEST_GATE=<folder> set and an iteration-2 config, it writes <folder>/waiting.<pid> (the
run has generated, ranked and cached its reference log-probs) and waits until <folder>/open exists;
then, as without the variable, it becomes `python -m selm.train --config <file>`. It ignores SIGTERM
and SIGUSR2 (as a training process that does not stop when asked), so an interrupted job stops only
through the loop's own handling or Slurm's SIGKILL.
"""

import os
import signal
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    gate = os.environ.get("SELM_TEST_GATE")
    config = sys.argv[sys.argv.index("--config") + 1]
    if gate and "/iter2/" in config:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        (Path(gate) / f"waiting.{os.getpid()}").write_text(config)
        while not (Path(gate) / "open").exists():
            time.sleep(0.1)
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
