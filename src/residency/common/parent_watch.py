"""Daemons that end with the process that started them, even when it is SIGKILLed.

A supervisor killed with SIGKILL cannot forward a signal: its children are re-parented and
run on (a SuperNode retrying its coordinator for ever, a SuperLink holding its port, a task
pushing a reply nobody takes). Each child watches its parent's pid instead and ends itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable

import psutil

PARENT_FLAG = "--residency-parent-pid"
"""The flag a Residency wrapper of a Flower daemon takes its supervisor's pid from."""


def when_orphaned(parent: int, then: Callable[[], None], *, poll_s: float = 0.5) -> None:
    """Run ``then`` (in a daemon thread) once this process's parent is no longer ``parent``."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        then()

    threading.Thread(target=watch, name="residency-parent-watch", daemon=True).start()


def interrupt_then_exit(grace_s: float) -> Callable[[], None]:
    """SIGINT this process (Flower's daemons stop cleanly on it), then exit after ``grace_s``."""

    def stop() -> None:
        signal.raise_signal(signal.SIGINT)
        time.sleep(grace_s)
        os._exit(1)

    return stop


def stop_below(root: psutil.Process, grace_s: float) -> None:
    """SIGINT every process below ``root``, wait up to ``grace_s``, then kill those left.

    A Flower daemon does not stop what its own children started (a SuperLink's SuperExec
    leaves its ServerApps running): whoever stops the daemon stops them first, while the
    daemon still answers them.
    """
    try:
        below = root.children(recursive=True)
    except psutil.Error:
        return
    for process in below:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGINT)
    _, alive = psutil.wait_procs(below, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


def take_parent_flag(args: list[str]) -> int | None:
    """Remove ``PARENT_FLAG PID`` from ``args`` (in place) and return the pid, if present."""
    if PARENT_FLAG not in args:
        return None
    at = args.index(PARENT_FLAG)
    parent = int(args[at + 1])
    del args[at : at + 2]
    return parent
