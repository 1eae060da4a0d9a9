"""One ServerApp per run folder, and a way for ``coordinator start`` to see one still running.

A ServerApp that outlives its coordinator (its SuperLink gone, retrying it) would write over
what the next ``coordinator start`` settled for its run: end a run that was resumed, ledger a
finish for it, free the nodes' holds of a job that goes on. Each ServerApp holds an exclusive
lock on its run folder for its whole life; the kernel drops it however the process ends
(SIGKILL, power loss), so a held lock always means a live process. ``coordinator start``
waits for it, and refuses to settle the run while it is held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

LOCK_FILE = ".serverapp.lock"

_held: list[int] = []  # open descriptors: the locks last as long as this process


class RunDriven(Exception):
    """A run folder is still locked by a live ServerApp."""


def hold_run(out_dir: Path) -> None:
    """Lock ``out_dir`` for this process's life; refuse if another process drives it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDriven(
            f"run {out_dir.name} is driven by another ServerApp (pid {_pid(out_dir)})"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held.append(fd)


def _pid(folder: Path) -> str:
    with contextlib.suppress(OSError):
        return (folder / LOCK_FILE).read_text("utf-8").strip() or "unknown"
    return "unknown"


def driver(folder: Path) -> str | None:
    """The pid of the live process that holds ``folder``'s lock, or None if nobody does."""
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _pid(folder)
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return None


def wait_undriven(folders: list[Path], timeout_s: float, *, poll_s: float = 0.2) -> None:
    """Return once no process holds any of ``folders``' locks; raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        driven = {folder.name: pid for folder in folders if (pid := driver(folder)) is not None}
        if not driven:
            return
        if time.monotonic() >= deadline:
            run, pid = next(iter(driven.items()))
            raise RunDriven(
                f"run {run} is still driven by a ServerApp of an earlier start (pid {pid}), "
                f"{timeout_s:g} s after this start began"
            )
        time.sleep(poll_s)
