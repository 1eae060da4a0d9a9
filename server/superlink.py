"""Flower's SuperLink, with a longer SQLite lock, Residency's SuperExec and a supervisor watch.

The SuperExec it starts runs only Residency's ServerApp (:mod:`residency.server.superexec`).

With ``--database`` the SuperLink keeps message chunks in SQLite and deletes a delivered
message's whole chunk tree in one write transaction: 2.5 s for a 438 MB (BERT-base) update on
an idle 2-core machine, 4-13 s under load. Flower 1.42 waits at most 5 s for the write lock
(``busy_timeout``) and answers HTTP 500 on ``database is locked``, which its clients do not
retry: the ServerApp and the launcher's log stream died in 3 of 6 runs of
``tests/integration/test_large_update.py``. 25 s stays below Flower's 30 s HTTP client
timeout, so a waiting request gets its answer rather than a client-side retry (a retried
pull would lose replies already marked delivered).
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
from typing import Any

import psutil

from residency.common.parent_watch import interrupt_then_exit, take_parent_flag, when_orphaned

SQLITE_BUSY_TIMEOUT_MS = 25_000


def raise_lock_timeout() -> None:
    """Make every SQLite connection Flower opens from now on wait ``SQLITE_BUSY_TIMEOUT_MS``."""
    from flwr.supercore import sql_mixin

    # _set_sqlite_pragmas reads this module attribute on every new connection (Flower 1.42.0,
    # pinned); patched before the SuperLink opens its first one.
    module = vars(sql_mixin)
    module["SQLITE_PRAGMAS"] = tuple(
        (name, str(SQLITE_BUSY_TIMEOUT_MS) if name == "busy_timeout" else value)
        for name, value in module["SQLITE_PRAGMAS"]
    )


STOP_GRACE_S = 30.0


def stop_with(parent: int) -> None:
    """Stop this SuperLink and everything it started when ``parent`` is gone.

    ``residency coordinator start`` may be SIGKILLed, which it cannot forward; without this
    its SuperLink would keep serving the port with nobody to stop it. The run's ServerApp is
    asked first (SIGINT: it ledgers its in-flight round and ends the run as stopped while the
    SuperLink still answers), ended outright after a grace, then the SuperLink gets the SIGINT
    it stops cleanly on, and is ended outright if it has not stopped after another.
    """

    def stop() -> None:
        below = psutil.Process().children(recursive=True)
        for child in below:
            with contextlib.suppress(psutil.Error):
                child.send_signal(signal.SIGINT)
        _, alive = psutil.wait_procs(below, timeout=STOP_GRACE_S / 2)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        interrupt_then_exit(STOP_GRACE_S)()

    when_orphaned(parent, stop)


def launch_residency_superexec() -> None:
    """Start the coordinator's SuperExec (:mod:`residency.server.superexec`), not Flower's.

    Flower 1.42 (pinned) builds the command in one function; its arguments pass through.
    """
    module = importlib.import_module("flwr.superlink.cli.flower_superlink")
    original = module._get_superexec_command

    def command(*args: Any, **kwargs: Any) -> list[str]:
        flower = original(*args, **kwargs)
        return [sys.executable, "-m", "residency.server.superexec", *flower[1:]]

    vars(module)["_get_superexec_command"] = command


def run_superlink() -> None:
    """``flower-superlink`` with ``busy_timeout`` raised; other arguments pass through."""
    from flwr.superlink.cli import flower_superlink

    args = sys.argv[1:]
    parent = take_parent_flag(args)
    if parent is not None:
        stop_with(parent)
    raise_lock_timeout()
    launch_residency_superexec()
    sys.argv[:] = ["flower-superlink", *args]
    flower_superlink()


if __name__ == "__main__":
    run_superlink()
