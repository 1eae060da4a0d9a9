"""The ServerApp a coordinator runs for ``residency run``: the job arrives in the run config.

``residency run`` ships the validated job as JSON under the run-config key ``job``. Output
goes to ``$RESIDENCY_RUNS_DIR/<run id>/`` on the coordinator host, the folder layout of
``simulate``; progress leaves as event lines in Flower's run log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from pydantic import ValidationError

from residency.common.config.job import Job
from residency.common.config.loading import describe_validation_error
from residency.common.errors import ConfigError, DataError
from residency.server.admission import read_admitted
from residency.server.events import EventPrinter, RunFinished, RunRefused, RunStarted, emit
from residency.server.federation import RESULTS_FILE, JobFailed, run_federation
from residency.server.launch import (
    ADMITTED_ENV,
    JOB_KEY,
    LEDGER_DIR_ENV,
    LEDGER_KEY_ENV,
    RUNS_DIR_ENV,
)
from residency.server.results import Results
from residency.server.run_ledger import RunLedger

app = ServerApp()


def runs_dir() -> Path:
    """Where the coordinator keeps run outputs (set by ``residency coordinator start``)."""
    folder = os.environ.get(RUNS_DIR_ENV)
    if not folder:
        raise JobFailed(
            f"{RUNS_DIR_ENV} is not set; fix: start the coordinator with "
            "`residency coordinator start DIR`"
        )
    return Path(folder)


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


def job_from_run_config(run_config: Mapping[str, object]) -> Job:
    """The job ``residency run`` sent; a job the coordinator cannot accept is refused in one line.

    Validation runs again here because paths in the job (a checkpoint folder, the test set) are
    read on the coordinator host, which may not be where the job was written.
    """
    try:
        job = Job.model_validate(json.loads(str(run_config[JOB_KEY])))
    except (KeyError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        error = (
            describe_validation_error(Path("job"), exc)
            if isinstance(exc, ValidationError)
            else f"job: missing or not JSON ({type(exc).__name__}); fix: use `residency run`"
        )
        emit(RunRefused(error=error))
        raise JobFailed(error) from exc
    return job


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the job in the run config; print progress events; keep outputs on the coordinator."""
    job = job_from_run_config(context.run_config)
    out_dir = runs_dir() / str(context.run_id)
    emit(RunStarted(run_dir=str(out_dir.resolve()), nodes=len(job.nodes)))
    try:
        run_federation(
            grid,
            job,
            nodes=len(job.nodes),
            out_dir=out_dir,
            observer=EventPrinter(),
            admitted=admitted_countries(),
            run=str(context.run_id),
            ledger=run_ledger(str(context.run_id), job),
        )
    except (ConfigError, DataError) as exc:  # e.g. the job's test file is not on this host
        if not (out_dir / RESULTS_FILE).exists():
            emit(RunRefused(error=str(exc)))
        raise
    finally:
        path = out_dir / RESULTS_FILE
        if path.exists():
            emit(RunFinished(results=Results.model_validate_json(path.read_text("utf-8"))))
