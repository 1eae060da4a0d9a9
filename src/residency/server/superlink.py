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
import logging
import os
import sys
from pathlib import Path
from typing import Any

import psutil

from residency.common.parent_watch import (
    interrupt_then_exit,
    stop_below,
    take_parent_flag,
    when_orphaned,
)
from residency.server.launch import RUNS_DIR_ENV, SHUTDOWN_MARKER

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


log = logging.getLogger("residency.coordinator")

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
        runs = os.environ.get(RUNS_DIR_ENV)
        if runs:  # the coordinator is going, not the runs: they resume at its next start
            with contextlib.suppress(OSError):
                (Path(runs) / SHUTDOWN_MARKER).write_text("", "utf-8")
        stop_below(psutil.Process(), STOP_GRACE_S / 2)
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


def refuse_bad_launches() -> None:
    """Check every launch inside Flower's ``StartRun``, before a run exists.

    A job the coordinator would refuse (:mod:`residency.server.launch_check`) never becomes a
    Flower run: the launcher hears why at once, with the code Flower gives an invalid run
    config and the reason as its details, and the refusal is kept for ``runs`` and the
    dashboard. Flower 1.42 (pinned) routes both its gRPC and HTTP Control APIs through the
    one handler patched here.
    """
    from flwr.common.constant import SubStatus
    from flwr.supercore.error import ApiErrorCode, FlowerError
    from flwr.superlink.servicer.control import control_handlers

    from residency.server.launch import DATA_DIR_ENV
    from residency.server.launch_check import (
        REFUSAL_PREFIX,
        LaunchRefused,
        check_launch,
        record_queued_run,
        record_refused_run,
        record_stopped_in_queue,
    )

    data, runs = os.environ.get(DATA_DIR_ENV), os.environ.get(RUNS_DIR_ENV)
    if not data or not runs:  # not a Residency coordinator (Flower's own SuperLink in tests)
        return
    original = control_handlers.start_run

    def start_run(request: Any, account: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
        fab = bytes(request.fab.content)
        try:
            check_launch(fab, Path(data))
        except LaunchRefused as exc:
            reason = str(exc)
        else:
            accepted = original(request, account, state, *args, **kwargs)
            if accepted.run_id:
                record_queued_run(fab, run=int(accepted.run_id), runs=Path(runs))
            return accepted
        # The run is created and ended at once, before any SuperExec can launch it, so that
        # `runs`, the dashboard and the ledger list the refused launch like any other.
        response = original(request, account, state, *args, **kwargs)
        run = int(response.run_id)
        [info] = state.get_run_info(run_ids=[run])
        state.finish_task(info.primary_task_id, SubStatus.FAILED, f"refused: {reason}")
        record_refused_run(fab, run=run, reason=reason, runs=Path(runs))
        log.warning("launch refused (listed as run %d): %s", run, reason)
        raise FlowerError(
            ApiErrorCode.INVALID_RUN_CONFIG,
            f"launch refused: {reason}",
            public_details=f"{REFUSAL_PREFIX}{reason} (listed as run {run})",
        )

    original_stop = control_handlers.stop_run

    def stop_run(request: Any, account: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
        stopped = original_stop(request, account, state, *args, **kwargs)
        if stopped.success:
            record_stopped_in_queue(run=int(request.run_id), runs=Path(runs))
        return stopped

    vars(control_handlers)["start_run"] = start_run
    vars(control_handlers)["stop_run"] = stop_run


def run_superlink() -> None:
    """``flower-superlink`` with ``busy_timeout`` raised; other arguments pass through."""
    from flwr.superlink.cli import flower_superlink

    args = sys.argv[1:]
    parent = take_parent_flag(args)
    if parent is not None:
        stop_with(parent)
    raise_lock_timeout()
    refuse_bad_launches()
    launch_residency_superexec()
    sys.argv[:] = ["flower-superlink", *args]
    flower_superlink()


if __name__ == "__main__":
    run_superlink()
