"""A run's progress logged to MLflow, for operators who track experiments there already.

A job's ``[tracking]`` table turns it on (``pip install 'residency[tracking]'``). The
coordinator logs what ``results.json`` holds as it is written: each round's scores, bytes,
time and dropped countries (step = round), each country's signed ε against its target, and at
the end the kept model's scores, ``results.json`` and the model folder. Nothing else: no
node sends anything more, and nothing here is sent to a node.

Where it logs is the coordinator operator's choice (``tracking_uri`` in ``coordinator.toml``,
else ``DIR/tracking/mlflow.db``); ``simulate`` uses the job's ``uri`` or
``OUTPUT/mlflow.db``. Tracking only watches: the first MLflow error is logged and tracking
stops, and the job goes on.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from residency.common.config.job import Job, pipeline_name
from residency.common.errors import ConfigError
from residency.server.results import RESULTS_FILE, Results, RoundResult, RunStatus

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("residency.coordinator")

DATABASE = "mlflow.db"
ARTIFACTS = "mlartifacts"
_TERMINAL = {
    RunStatus.COMPLETED: "FINISHED",
    RunStatus.STOPPED: "KILLED",
    RunStatus.RESUMED: "KILLED",
}


def require_mlflow(where: str) -> None:
    """Refuse a job with ``[tracking]`` where MLflow is not installed, before anything runs."""
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            f"{where}: [tracking]: MLflow is not installed here; fix: pip install "
            "'residency[tracking]' there, or remove the [tracking] table"
        )


def local_uri(folder: Path) -> str:
    """An SQLite store in ``folder`` (MLflow's file store is deprecated), artifacts beside."""
    return f"sqlite:///{(folder / DATABASE).resolve()}"


class Tracker:
    """One Residency run as one MLflow run; every call is best effort after the first error."""

    def __init__(self, job: Job, *, uri: str, run: str) -> None:
        self.job, self.uri, self.run = job, uri, run
        self._client: MlflowClient | None = None
        self._run_id: str | None = None
        self._failed = False

    def _sqlite_file(self) -> Path | None:
        """The database file of an SQLite store (None: a tracking server)."""
        prefix = "sqlite:///"
        return Path(self.uri[len(prefix) :]) if self.uri.startswith(prefix) else None

    def _guard(self, what: str, call: Callable[[], None]) -> None:
        if self._failed:
            return
        try:
            call()
        except Exception as exc:  # MLflow raises its own and its HTTP stack's errors
            self._failed = True
            log.warning("MLflow tracking stopped (%s at %s): %s", what, self.uri, exc)

    def started(self, results: Results) -> None:
        """Create (or find) the experiment and open the run, with the job's parameters."""
        self._guard("starting the run", lambda: self._start(results))

    def _start(self, results: Results) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        database = self._sqlite_file()
        if database is not None:  # its artifacts beside it; a server chooses its own
            database.parent.mkdir(parents=True, exist_ok=True)
        artifacts = None if database is None else (database.parent / ARTIFACTS).resolve()
        client = MlflowClient(tracking_uri=self.uri)
        tracking = self.job.tracking
        name = (tracking.experiment if tracking else None) or self.job.name
        found = client.get_experiment_by_name(name)
        experiment = (
            found.experiment_id
            if found is not None
            else client.create_experiment(
                name, artifact_location=None if artifacts is None else artifacts.as_uri()
            )
        )
        job = self.job
        tags = {"residency.run": self.run, "residency.job": job.name}
        if results.resumed:
            tags["residency.resumes"] = results.resumed[-1].from_run
        mlflow_run = client.create_run(experiment, run_name=f"{job.name}-{self.run}", tags=tags)
        params = {
            "update": pipeline_name(job.train.update, job.train.warm_start),
            "rounds": job.train.server_rounds,
            "countries": ",".join(node.country for node in job.nodes),
            "target_epsilon": job.privacy.target_epsilon,
            "delta": job.privacy.delta,
            "accountant": job.privacy.accountant.value,
            "model": str(job.model.path),
            "aggregation": job.train.aggregation.value,
        }
        client.log_batch(
            mlflow_run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()]
        )
        self._client, self._run_id = client, mlflow_run.info.run_id

    def round(self, results: Results, result: RoundResult) -> None:
        """A completed round's scores and traffic, and each country's ε so far."""
        values: dict[str, float | None] = {
            "accuracy": result.accuracy,
            "macro_f1": result.macro_f1,
            "test_loss": result.test_loss,
            "held_out_accuracy": result.held_out_accuracy,
            "bytes_up": result.bytes_up,
            "bytes_down": result.bytes_down,
            "round_seconds": result.seconds,
            "dropped_countries": len(result.dropped),
        }
        for country, privacy in results.privacy.items():
            values[f"epsilon/{country}"] = privacy.epsilon
        self._guard("logging a round", lambda: self._metrics(values, step=result.round))

    def _metrics(self, values: dict[str, float | None], *, step: int) -> None:
        from mlflow.entities import Metric

        if self._client is None or self._run_id is None:
            return
        stamp = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), stamp, step)
            for key, value in values.items()
            if value is not None
        ]
        self._client.log_batch(self._run_id, metrics=metrics)

    def finished(self, results: Results, out_dir: Path) -> None:
        """The kept model's scores, ``results.json`` and the model folder; the run's end."""
        self._guard("ending the run", lambda: self._finish(results, out_dir))

    def _finish(self, results: Results, out_dir: Path) -> None:
        if self._client is None or self._run_id is None:
            return
        final, step = results.final, max((r.round for r in results.rounds), default=0)
        if final is not None:
            self._metrics(
                {"final_accuracy": final.accuracy, "final_macro_f1": final.macro_f1}, step=step
            )
            tracking = self.job.tracking
            model = Path(final.model_dir)
            if (tracking is None or tracking.log_model) and model.is_dir():
                self._client.log_artifacts(self._run_id, str(model), artifact_path="model")
        if (out_dir / RESULTS_FILE).is_file():
            self._client.log_artifact(self._run_id, str(out_dir / RESULTS_FILE))
        self._client.set_terminated(self._run_id, status=_TERMINAL.get(results.status, "FAILED"))


def coordinator_tracker(job: Job, *, run: str, settings: Path | None) -> Tracker | None:
    """The deployed coordinator's tracker for ``job`` (None without ``[tracking]``)."""
    if job.tracking is None:
        return None
    uri = None
    if settings is not None and settings.is_file():
        from residency.common.config.loading import load_model
        from residency.server.coordinator import CoordinatorSettings

        uri = load_model(settings, CoordinatorSettings).tracking_uri
        uri = uri or local_uri(settings.parent / "tracking")
    if uri is None:
        log.warning("the job asks for MLflow tracking, but no coordinator.toml says where")
        return None
    return Tracker(job, uri=uri, run=run)
