"""Run a daemon's Flower processes as one unit: start them, stop them all on a signal.

Flower's servers stop cleanly on SIGINT but not always on SIGTERM (what systemd, Docker and
Kubernetes send), so both are forwarded as SIGINT. When any child exits, the others are
stopped too: half a node (a SuperNode without its executor) must not linger.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import psutil

from residency.common.parent_watch import stop_below

GRACE_S = 20.0


@dataclass
class Child:
    """One supervised process and the file its output goes to."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    stop_below_first: bool = False
    """Stop the processes it started before it (a SuperLink's ServerApps), see ``interrupt``."""
    process: subprocess.Popen[bytes] | None = None
    handle: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start in its own process group, so a terminal's Ctrl-C reaches us only once."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self.log.open("ab")
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def poll(self) -> int | None:
        """Exit code, or None while running."""
        return None if self.process is None else self.process.poll()

    def interrupt(self) -> None:
        """Ask it to stop the way Flower expects; first what it started, if so configured.

        A SuperLink stopped by SIGINT leaves its SuperExec's ServerApps running: they would
        retry it, then write over what the next ``coordinator start`` settled for their runs.
        """
        if self.process is not None and self.process.poll() is None:
            if self.stop_below_first:
                with contextlib.suppress(psutil.Error):
                    stop_below(psutil.Process(self.process.pid), GRACE_S / 2)
            self.process.send_signal(signal.SIGINT)

    def kill(self) -> None:
        """Last resort after the grace period."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    def close(self) -> None:
        """Reap and close the log file."""
        if self.process is not None:
            self.process.wait()
        if self.handle is not None:
            self.handle.close()


@dataclass
class Outcome:
    """How supervision ended."""

    stopped_by_signal: bool
    first_exit: tuple[str, int] | None


def supervise(
    children: Sequence[Child],
    *,
    grace_s: float = GRACE_S,
    on_tick: Callable[[], None] | None = None,
    before_stop: Callable[[], None] | None = None,
) -> Outcome:
    """Start ``children`` in order; return when a signal arrives or any child exits.

    ``on_tick`` runs every few tenths of a second while they run (and once more at the end),
    for a supervisor that reports what its children log. ``before_stop`` runs once a signal
    asked for the stop, before the children hear it.
    """
    requested: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        requested.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    first_exit: tuple[str, int] | None = None
    try:
        for child in children:
            child.start()
        while not requested and first_exit is None:
            for child in children:
                code = child.poll()
                if code is not None:
                    first_exit = (child.name, code)
                    break
            else:
                if on_tick is not None:
                    on_tick()
                time.sleep(0.2)
    finally:
        if requested and before_stop is not None:
            before_stop()
        for child in reversed(children):
            child.interrupt()
        deadline = time.monotonic() + grace_s
        while any(c.poll() is None for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        for child in children:
            child.kill()
            child.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if on_tick is not None:
            on_tick()
    return Outcome(stopped_by_signal=bool(requested), first_exit=first_exit)
