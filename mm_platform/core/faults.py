"""Named fault-injection points for the reliability tests.

With ``MM_FAULT_POINT=<name>`` in the environment, the process SIGKILLs itself when it reaches
that point — a real crash in the middle of a write, not a simulated exception.
"""

import os
import signal


def fault_point(name: str) -> None:
    if os.environ.get("MM_FAULT_POINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
