"""The Flower ServerApp of a Residency job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from residency.common.config.job import Job
from residency.common.config.signed_job import SignedJob
from residency.server.federation import FederationObserver, RunControl, run_federation
from residency.server.results import Results
from residency.server.run_ledger import RunLedger
from residency.server.tracking import Tracker


def make_server_app(
    job: Job,
    *,
    out_dir: Path,
    observer: FederationObserver | None = None,
    sink: list[Results] | None = None,
    wrap_grid: Callable[[Grid], Grid] | None = None,
    ledger: tuple[Path, Path] | None = None,
    signed: SignedJob | None = None,
    control: RunControl | None = None,
    tracking_uri: str | None = None,
) -> ServerApp:
    """A ServerApp bound to ``job``; its results are appended to ``sink`` when given.

    ``wrap_grid`` lets a caller observe every message the coordinator receives (tests use it
    to prove that no record text ever arrives). ``ledger`` is (ledger folder, signing key);
    ``signed`` is the job as its launcher signed it, relayed to every node.
    ``tracking_uri``: where the job's ``[tracking]`` logs to MLflow.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        # the job is bound here; nodes read their own settings, not the context
        if wrap_grid is not None:
            grid = wrap_grid(grid)
        run = str(context.run_id)
        try:
            results = run_federation(
                grid,
                job,
                out_dir=out_dir,
                observer=observer,
                run=run,
                ledger=None if ledger is None else RunLedger.open(*ledger, run=run, job=job.name),
                signed=signed,
                control=control,
                tracker=None if tracking_uri is None else Tracker(job, uri=tracking_uri, run=run),
            )
        except KeyboardInterrupt:
            if control is None or not control.stop.is_set():
                raise
            return  # stopped and written: Flower ends the simulation as after a last round
        if sink is not None:
            sink.append(results)

    return app
