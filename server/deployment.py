"""The ServerApp a coordinator runs for ``residency run``: the job arrives in the run config.

``residency run`` ships the validated job as JSON under the run-config key ``job``. Output
goes to ``$RESIDENCY_RUNS_DIR/<run id>/`` on the coordinator host, the folder layout of
``simulate``; progress leaves as event lines in Flower's run log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from residency.common.config.job import Job
from residency.server.events import EventPrinter, RunFinished, RunStarted, emit
from residency.server.federation import RESULTS_FILE, JobFailed, run_federation
from residency.server.launch import JOB_KEY, RUNS_DIR_ENV
from residency.server.results import Results

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


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the job in the run config; print progress events; keep outputs on the coordinator."""
    job = Job.model_validate(json.loads(str(context.run_config[JOB_KEY])))
    out_dir = runs_dir() / str(context.run_id)
    emit(RunStarted(run_dir=str(out_dir.resolve()), nodes=len(job.nodes)))
    try:
        run_federation(grid, job, nodes=len(job.nodes), out_dir=out_dir, observer=EventPrinter())
    finally:
        path = out_dir / RESULTS_FILE
        if path.exists():
            emit(RunFinished(results=Results.model_validate_json(path.read_text("utf-8"))))
