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
from residency.common.config.signed_job import SignedJob, open_job
from residency.common.errors import ConfigError, DataError
from residency.server.admission import read_admitted
from residency.server.events import EventPrinter, RunFinished, RunRefused, RunStarted, emit
from residency.server.federation import JobFailed, run_federation
from residency.server.job_paths import confine_job_paths, unquoted
from residency.server.launch import (
    ADMITTED_ENV,
    DATA_DIR_ENV,
    JOB_KEY,
    JOB_LAUNCHER_KEY,
    JOB_SIGNATURE_KEY,
    LEDGER_DIR_ENV,
    LEDGER_KEY_ENV,
    RUNS_DIR_ENV,
    TRUSTED_LAUNCHERS_ENV,
)
from residency.server.results import RESULTS_FILE, Results
from residency.server.run_ledger import RunLedger

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


def data_dir() -> Path:
    """The only folder a launched job may read files from (``data`` in coordinator.toml)."""
    return _set_by_start(DATA_DIR_ENV)


def trusted_launchers() -> list[str]:
    """The launcher keys coordinator.toml trusts (set by ``residency coordinator start``)."""
    listed = os.environ.get(TRUSTED_LAUNCHERS_ENV, "")
    return [key for key in listed.split(",") if key]


def signed_from_run_config(run_config: Mapping[str, object]) -> SignedJob | None:
    """The job and signature ``residency run`` sent, or ``None`` when any part is missing."""
    parts = [run_config.get(key) for key in (JOB_KEY, JOB_LAUNCHER_KEY, JOB_SIGNATURE_KEY)]
    if not all(isinstance(part, str) and part for part in parts):
        return None
    body, launcher, signature = (str(part) for part in parts)
    try:
        return SignedJob(body=body, launcher=launcher, signature=signature)
    except ValidationError:
        return None


def job_from_run_config(
    run_config: Mapping[str, object], data: Path, trusted: list[str]
) -> tuple[Job, SignedJob]:
    """The job ``residency run`` sent; a job the coordinator cannot accept is refused in one line.

    The signature is checked first, before any file the job names is opened. Validation then
    runs again with those files (a checkpoint folder, the test set) opened on the coordinator
    host, inside its ``data`` folder only (:mod:`residency.server.job_paths`).
    """
    signed = signed_from_run_config(run_config)
    try:
        open_job(signed, trusted, operator="coordinator.toml")
        assert signed is not None  # open_job refuses an unsigned job
        raw = json.loads(signed.body)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        job = Job.model_validate(confine_job_paths(raw, data))
    except ConfigError as exc:
        emit(RunRefused(error=str(exc)))
        raise JobFailed(str(exc)) from exc
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        error = (
            describe_validation_error(Path("job"), exc)
            if isinstance(exc, ValidationError)
            else f"job: not JSON ({type(exc).__name__}); fix: use `residency run`"
        )
        emit(RunRefused(error=error))
        raise JobFailed(error) from exc
    return job, signed


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the job in the run config; print progress events; keep outputs on the coordinator."""
    job, signed = job_from_run_config(context.run_config, data_dir(), trusted_launchers())
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
            signed=signed,
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
            emit(RunFinished(results=Results.model_validate_json(path.read_text("utf-8"))))
