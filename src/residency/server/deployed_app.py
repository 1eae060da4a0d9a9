"""The ServerApp a coordinator runs for ``residency run``: the job arrives in the run config.

``residency run`` ships the validated job as JSON under the run-config key ``job``. Output
goes to ``$RESIDENCY_RUNS_DIR/<run id>/`` on the coordinator host, the folder layout of
``simulate``; progress leaves as event lines in Flower's run log.
"""

from __future__ import annotations

import os
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from residency.common.config.job import Job
from residency.common.errors import ConfigError, DataError
from residency.server.admitted_nodes import read_admitted
from residency.server.events import EventPrinter, RunFinished, RunRefused, RunStarted, emit
from residency.server.federation import JobFailed, run_federation
from residency.server.job_paths import unquoted
from residency.server.launch import (
    ADMITTED_ENV,
    COORDINATOR_SETTINGS_ENV,
    DATA_DIR_ENV,
    LEDGER_DIR_ENV,
    LEDGER_KEY_ENV,
    RUNS_DIR_ENV,
    SHUTDOWN_MARKER,
)
from residency.server.launch_check import LaunchRefused, accepted_job, trusted_launchers
from residency.server.recovery import end_prepared, prepared_resume
from residency.server.results import RESULTS_FILE, Results, RunStatus
from residency.server.run_ledger import RunLedger
from residency.server.run_lock import RunDriven, hold_run
from residency.server.tracking import coordinator_tracker

app = ServerApp()


def _set_by_start(variable: str) -> Path:
    """A folder ``residency coordinator start`` names in the ServerApp's environment."""
    folder = os.environ.get(variable)
    if not folder:
        raise JobFailed(
            f"{variable} is not set; fix: start the coordinator with "
            "`residency coordinator start DIR`"
        )
    return Path(folder)


def runs_dir() -> Path:
    """Where the coordinator keeps run outputs (set by ``residency coordinator start``)."""
    return _set_by_start(RUNS_DIR_ENV)


def admitted_countries() -> dict[int, str]:
    """Node id to the country its key was admitted for (`residency coordinator admit`)."""
    path = os.environ.get(ADMITTED_ENV)
    if not path:
        return {}
    return {int(node.node_id): node.country for node in read_admitted(Path(path))}


def run_ledger(run: str, job: Job) -> RunLedger | None:
    """The coordinator's ledger (set by ``residency coordinator start``)."""
    folder, key = os.environ.get(LEDGER_DIR_ENV), os.environ.get(LEDGER_KEY_ENV)
    if not folder or not key:
        return None
    return RunLedger.open(Path(folder), Path(key), run=run, job=job.name)


def _path_in(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value) if value else None


def data_dir() -> Path:
    """The only folder a launched job may read files from (``data`` in coordinator.toml)."""
    return _set_by_start(DATA_DIR_ENV)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the job in the run config; print progress events; keep outputs on the coordinator."""
    out_dir = runs_dir() / str(context.run_id)
    try:
        hold_run(out_dir)  # for this process's life: see residency.server.run_lock
    except RunDriven as exc:  # a second launch of the run: the first one writes its outputs
        raise JobFailed(str(exc)) from None
    resumed = prepared_resume(out_dir)
    try:
        job, signed = accepted_job(context.run_config, data_dir(), trusted_launchers())
        if resumed is not None and resumed.resumed[-1].job_sha256 != signed.sha256:
            raise LaunchRefused("the run resumes another job than the one it carries")
    except LaunchRefused as exc:  # a launch that reached here without the SuperLink's check
        if resumed is not None:  # the resumed run ends here, said in its results
            end_prepared(out_dir, resumed, f"could not resume: {exc}")
        emit(RunRefused(error=str(exc)))
        raise JobFailed(str(exc)) from exc
    emit(RunStarted(run_dir=str(out_dir.resolve()), nodes=len(job.nodes)))
    try:
        run_federation(
            grid,
            job,
            out_dir=out_dir,
            observer=EventPrinter(),
            admitted=admitted_countries(),
            run=str(context.run_id),
            ledger=run_ledger(str(context.run_id), job),
            signed=signed,
            resumed=resumed,
            tracker=coordinator_tracker(
                job, run=str(context.run_id), settings=_path_in(COORDINATOR_SETTINGS_ENV)
            ),
            shutting_down=(runs_dir() / SHUTDOWN_MARKER).exists,
        )
    except DataError as exc:  # the job's test file: named back, never quoted
        if not (out_dir / RESULTS_FILE).exists():
            error = unquoted(exc, name=Path(job.data.test or "").name)
            emit(RunRefused(error=str(error)))
            raise error from None
        raise
    except ConfigError as exc:
        if not (out_dir / RESULTS_FILE).exists():
            emit(RunRefused(error=str(exc)))
        raise
    finally:
        path = out_dir / RESULTS_FILE
        if path.exists():
            results = Results.model_validate_json(path.read_text("utf-8"))
            if results.status is not RunStatus.RUNNING:  # running: left for the next start
                emit(RunFinished(results=results))
