"""Children that do not outlive the launcher, even when it is killed outright.

On Linux the kernel can send a child a signal when the thread that started it dies
(`PR_SET_PDEATHSIG`); a launcher killed by SIGKILL or the OOM killer then takes its
services and nats-server with it instead of leaving them holding ports and data folders.
Start children from a thread that lives as long as they should (the main thread).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess, or None where the kernel offers no such thing."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not after
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), sig)

    return preexec


_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Adopt our orphaned descendants (Linux). The embedded PostgreSQL's postmaster is
    daemonised by pg_ctl; as our child it can be reaped when it dies, where an init that
    does not reap (a container's) would keep it a zombie whose pid blocks a restart."""
    if not sys.platform.startswith("linux"):
        return False
    return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0
