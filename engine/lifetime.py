"""Tie a child process's life to its parent's, so a SIGKILLed parent leaves nothing running.

A process killed with SIGKILL runs no cleanup: its children are re-parented and live on.
On Linux the kernel can signal a child when its parent dies (``PR_SET_PDEATHSIG``);
``switchboard up`` uses it for its workers, and the embedded Redis keeper for its
redis-server. Elsewhere the request is refused and the caller falls back to its own
means (or to nothing, for a development machine).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def ends_with_this_process(sig: signal.Signals) -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``sig`` when this process dies.

    The request is made in the child between fork and exec. A parent that died in
    between is caught by comparing the parent's pid: the child then exits at once.
    Note that the kernel signals on the death of the *thread* that forked the child, so
    start long-lived children from a thread that lives as long as the process.
    """
    parent = os.getpid()

    def preexec() -> None:
        if die_with_parent(sig) and os.getppid() != parent:
            os._exit(1)

    return preexec
