"""Whether the coordinator accepts a launched job, decided before Flower creates its run.

``residency run`` submits a Flower App Bundle whose run config carries the signed job. The
ServerApp checks it again when it starts, but that is after Flower has created the run and
started a process (seconds, and a run that only ever says "refused"). The coordinator's
SuperLink runs this check inside Flower's ``StartRun`` instead: a job no trusted launcher
signed, or one that names a file outside the data folder, is refused at once, with its
reason, before ``run`` prints "started"; and the refusal is kept (:func:`record_refusal`) so
``runs`` and the dashboard list it. The trusted keys are read from ``coordinator.toml`` at
each check, so an operator's edit applies to the next launch without a restart. Import-light:
the SuperLink process never loads torch.
"""

from __future__ import annotations

import io
import json
import os
import tomllib
import zipfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from residency.common.clock import now
from residency.common.config.job import Job
from residency.common.config.loading import describe_validation_error, load_model
from residency.common.config.signed_job import SignedJob, open_job
from residency.common.errors import ConfigError
from residency.server.job_paths import confine_job_paths
from residency.server.launch import (
    COORDINATOR_SETTINGS_ENV,
    JOB_KEY,
    JOB_LAUNCHER_KEY,
    JOB_SIGNATURE_KEY,
)
from residency.server.tracking import require_mlflow

REFUSAL_PREFIX = "the coordinator refused the job: "
"""How a refusal's reason starts in Flower's error details, so ``run`` can tell it apart."""

REFUSED_STATUS = "refused"
"""The run-finished status a refused launch's run ends with in the coordinator's ledger."""


class LaunchRefused(Exception):
    """The coordinator does not accept this job; the message is the one line it says why."""


def trusted_launchers() -> list[str]:
    """The launcher keys ``coordinator.toml`` lists now (read at each check: no restart)."""
    from residency.server.coordinator import CoordinatorSettings

    path = os.environ.get(COORDINATOR_SETTINGS_ENV)
    if not path:
        return []
    return list(load_model(Path(path), CoordinatorSettings).trusted_launchers)


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


def accepted_job(
    run_config: Mapping[str, object], data: Path, trusted: list[str]
) -> tuple[Job, SignedJob]:
    """The job ``residency run`` sent, or ``LaunchRefused`` with one line saying why.

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
        if job.tracking is not None:  # open_job refused a tracking.uri: nodes' rule too
            require_mlflow("job (on the coordinator)")
        return job, signed
    except ConfigError as exc:
        raise LaunchRefused(str(exc)) from exc
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        error = (
            describe_validation_error(Path("job"), exc)
            if isinstance(exc, ValidationError)
            else f"job: not JSON ({type(exc).__name__}); fix: use `residency run`"
        )
        raise LaunchRefused(error) from exc


def bundle_run_config(fab: bytes) -> dict[str, object]:
    """The run config in a Flower App Bundle's ``pyproject.toml`` ({} if it has none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as bundle:
            project = tomllib.loads(bundle.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    config = project.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})
    return dict(config) if isinstance(config, dict) else {}


def check_launch(fab: bytes, data: Path) -> None:
    """Refuse a bundle whose job this coordinator would refuse (``LaunchRefused``)."""
    accepted_job(bundle_run_config(fab), data, trusted_launchers())


def job_name(fab: bytes) -> str:
    """The name the bundle's job gives itself, for listing a refused launch ("?" if none)."""
    signed = signed_from_run_config(bundle_run_config(fab))
    if signed is None:
        return "?"
    try:
        body = json.loads(signed.body)
    except ValueError:
        return "?"
    name = body.get("name") if isinstance(body, dict) else None
    return str(name)[:64] if isinstance(name, str) and name else "?"


def record_queued_run(fab: bytes, *, run: int, runs: Path) -> None:
    """List an accepted launch at once, as queued until its ServerApp starts (and rewrites it).

    ``runs`` and the dashboard then show every job a coordinator holds, the ones waiting for a
    free slot (``max_concurrent_runs``) included.
    """
    from residency.common.version import __version__
    from residency.server.results import RESULTS_FILE, Results, RunStatus

    Results(
        job=job_name(fab),
        status=RunStatus.QUEUED,
        residency_version=__version__,
        started_at=now(),
        config={},
    ).write(runs / str(run) / RESULTS_FILE)


def record_stopped_in_queue(*, run: int, runs: Path) -> None:
    """A queued run stopped (``runs stop``) before it started: it never will, and says so."""
    from residency.server.results import RESULTS_FILE, Results, RunStatus

    path = runs / str(run) / RESULTS_FILE
    try:
        results = Results.model_validate_json(path.read_text("utf-8"))
    except (OSError, ValueError):
        return
    if results.status is RunStatus.QUEUED:
        results.status, results.finished_at = RunStatus.STOPPED, now()
        results.error = "stopped while queued (runs stop); it never started and spent nothing"
        results.write(path)


def record_refused_run(fab: bytes, *, run: int, reason: str, runs: Path) -> None:
    """List a refused launch as the run Flower created for it, ended before it started.

    Its ``results.json`` (``runs`` shows the run as failed, the dashboard shows it with the
    reason) and a run-finished entry in the coordinator's ledger (status ``refused``), so an
    auditor sees every launch, refused ones included. Imported late: a refusal is rare and
    the ledger's record types bring torch into the SuperLink process.
    """
    from residency.common.privacy.ledger import LEDGER_FILE, EntryKind, Ledger
    from residency.common.privacy.signing import load_or_create_signer
    from residency.common.version import __version__
    from residency.server.launch import LEDGER_DIR_ENV, LEDGER_KEY_ENV
    from residency.server.results import RESULTS_FILE, Results, RunStatus

    name, at = job_name(fab), now()
    Results(
        job=name,
        status=RunStatus.FAILED,
        error=f"{REFUSAL_PREFIX}{reason}",
        residency_version=__version__,
        started_at=at,
        finished_at=at,
        config={},
    ).write(runs / str(run) / RESULTS_FILE)
    folder, key = os.environ.get(LEDGER_DIR_ENV), os.environ.get(LEDGER_KEY_ENV)
    if folder and key:
        signer = load_or_create_signer(Path(key), comment="residency-coordinator-ledger")
        Ledger(Path(folder) / LEDGER_FILE, signer).append(
            EntryKind.RUN_FINISHED,
            run=str(run),
            job=name,
            reason=reason,
            detail={"status": REFUSED_STATUS},
        )
