"""What ``coordinator start`` settles before its SuperLink serves: runs a crash left open.

A coordinator that died (SIGKILL, power loss) leaves runs that no ServerApp drives any more:
``results.json`` says ``running``, the ledger has no end entry, and the SuperLink database
still queues the round's undelivered messages, which nodes would pull, charge for and train
once the SuperLink is back, for a round nobody aggregates. Before the new SuperLink accepts a
connection, each such run is stopped in Flower's own state (``LinkState.stop_run`` deletes its
messages, as ``runs stop`` does) and its in-flight round is written to the ledger as
unconfirmed for every country it was sent to (they may have charged before the crash).

Then the job goes on. Nodes account a job by its signed hash, whatever Flower run carries it,
so the interrupted run is continued under a new Flower run of the same signed bundle: its
folder starts with the old run's results and checkpoint (:class:`.results.Resumed`), the
ServerApp picks up from the checkpoint's round, and every node charges within the same job
target. A round that was in flight is never sent again (nodes may have charged it): the job
continues with the round after it, so no country spends more than the job planned. The old
run ends ``resumed``, naming the new one. A run with no completed round, no checkpoint, or a
job the coordinator no longer accepts ends ``failed`` instead, with the reason.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from residency.common.clock import now
from residency.server.checkpoint import CHECKPOINT_DIR, load_checkpoint
from residency.server.coordinator import CoordinatorDir, CoordinatorSettings
from residency.server.launch_check import LaunchRefused, accepted_job, bundle_run_config
from residency.server.results import RESULTS_FILE, Results, Resumed, RunStatus
from residency.server.run_lock import LOCK_FILE, wait_undriven

if TYPE_CHECKING:
    from flwr.server.superlink.linkstate import LinkState
    from flwr.supercore.run import Run

log = logging.getLogger("residency.coordinator")

SERVERAPP_EXIT_WAIT_S = 45.0
"""How long a start waits for an earlier start's ServerApps (each exits within 30 s of losing
its coordinator, see :func:`.superlink.stop_with`)."""

UNCONFIRMED_REASON = "the coordinator stopped before the round closed; the node may have charged it"


@dataclass(frozen=True)
class EndedRun:
    """A run the restart settled, and what it says about it."""

    run: str
    reason: str
    resumed_as: str | None = None


def _link_state(database: Path) -> LinkState | None:
    """The SuperLink's state, opened while no SuperLink runs (None: no database yet)."""
    if not database.exists():
        return None
    from flwr.superlink.config_loader import (
        get_federation_manager,
        get_objectstore_linkstate_factories,
    )

    _, factory = get_objectstore_linkstate_factories(str(database), get_federation_manager())
    return factory.state()


def stop_flower_runs(state: LinkState | None) -> dict[str, Run]:
    """Stop every started, unfinished run in the SuperLink database; their messages go too.

    Called while no SuperLink runs, so no ServerApp can still be driving them. Returns the
    stopped runs by id, as they were (what a resumed run is created from).
    """
    if state is None:
        return {}
    from flwr.common.constant import Status

    open_runs = state.get_run_info(statuses=[Status.STARTING, Status.RUNNING])
    stopped = {str(run.run_id): run for run in open_runs if state.stop_run(run.run_id)}
    for run_id in stopped:
        log.warning("run %s was left open by a coordinator that stopped; stopped it", run_id)
    return stopped


def _where(results: Results) -> str:
    done = len(results.rounds)
    if results.in_flight is not None:
        return f"during round {results.in_flight.round}"
    return f"after {done} completed round{'s' if done != 1 else ''}"


def _failed_reason(results: Results, folder: Path, why: str) -> str:
    kept = ""
    if (folder / CHECKPOINT_DIR).is_dir():
        kept = f"; {CHECKPOINT_DIR}/ holds the global model of the last completed round"
    return (
        f"the coordinator stopped {_where(results)}; `residency coordinator start` ended the "
        f"run ({why}{kept})"
    )


def _checkpoint_round(folder: Path) -> int:
    """The round the run's intact checkpoint holds (0: none)."""
    try:
        return load_checkpoint(folder).checkpoint.round
    except (OSError, ValueError):
        return 0


@dataclass(frozen=True)
class _Plan:
    """How an interrupted run goes on: from which round, and the signed job it carries."""

    next_round: int
    lost_round: int | None
    job_sha256: str


def _plan(
    results: Results, checkpointed: int, run: Run | None, state: LinkState, settings: _Trust
) -> _Plan | str:
    """How the run resumes, or why it cannot (a reason for its ``failed`` end).

    ``checkpointed`` is the round its intact checkpoint holds (0: none).
    """
    if run is None:
        return "the SuperLink database no longer holds the run, so it cannot resume"
    if not checkpointed:
        return "no intact checkpoint of a completed round to resume from: launch the job again"
    fab = state.get_fab(run.fab_hash)
    config: dict[str, Any] = {**bundle_run_config(b"" if fab is None else fab.content)}
    config.update(run.override_config)
    try:
        job, signed = accepted_job(config, settings.data, settings.trusted)
    except LaunchRefused as exc:
        return f"the coordinator no longer accepts the job ({exc})"
    flight = results.in_flight
    done = max([checkpointed, *(r.round for r in results.rounds)])
    lost = flight.round if flight is not None and flight.round > done else None
    next_round = (lost or done) + 1
    if flight is not None and flight.refine:  # the release again ends the job: nothing follows
        next_round = job.train.server_rounds + 1
    return _Plan(next_round, lost, signed.sha256)


@dataclass(frozen=True)
class _Trust:
    data: Path
    trusted: list[str]


def _resume(
    results: Results, folder: Path, run: Run, state: LinkState, plan: _Plan, runs: Path
) -> str:
    """Create the new Flower run and its folder (results and checkpoint); its id."""
    new_id = state.create_run(
        run.fab_id,
        run.fab_version,
        run.fab_hash,
        run.override_config,
        run.federation_id,
        state.get_federation_config(run.run_id),
        run.flwr_aid,
        run.primary_task_type,
    )
    new = runs / str(new_id)
    new.mkdir(parents=True)
    shutil.copytree(folder / CHECKPOINT_DIR, new / CHECKPOINT_DIR)
    continued = results.model_copy(deep=True)
    continued.in_flight, continued.status = None, RunStatus.QUEUED  # until its ServerApp starts
    continued.resumed = [
        *results.resumed,
        Resumed(
            from_run=folder.name,
            next_round=plan.next_round,
            lost_round=plan.lost_round,
            job_sha256=plan.job_sha256,
            at=now(),
        ),
    ]
    continued.write(new / RESULTS_FILE)
    return str(new_id)


def _resumed_reason(results: Results, plan: _Plan, new_id: str) -> str:
    lost = ""
    if plan.lost_round is not None:
        lost = f"; round {plan.lost_round} was in flight and is not sent again"
    return (
        f"the coordinator stopped {_where(results)}; `residency coordinator start` resumed the "
        f"job as run {new_id} from round {plan.next_round}{lost}"
    )


def _flower_run(state: LinkState, run: str, stopped: dict[str, Run]) -> Run | None:
    """The Flower run behind ``run``, stopped or finished (None: the database lost it).

    A ServerApp stopped by a signal tells its SuperLink it failed, so Flower may already
    list the run as finished although ``results.json`` (the coordinator's own word) holds it
    for the next start; its undelivered messages are cleared like a stopped run's.
    """
    if run in stopped:
        return stopped[run]
    found = state.get_run_info(run_ids=[int(run)]) if run.isdigit() else []
    if not found:
        return None
    state.cleanup_run(int(run))
    return found[0]


def _open_runs(folder: CoordinatorDir) -> list[tuple[Path, Results]]:
    """Each run whose ``results.json`` still says ``running``, with those results."""
    found = []
    for path in sorted(folder.runs.glob(f"*/{RESULTS_FILE}")):
        results = Results.model_validate_json(path.read_text("utf-8"))
        if results.status is RunStatus.RUNNING:
            found.append((path, results))
    return found


def settle_open_runs(folder: CoordinatorDir, settings: CoordinatorSettings) -> list[EndedRun]:
    """Resume, or else end, every run the coordinator's outputs still show as running.

    Waits up to ``SERVERAPP_EXIT_WAIT_S`` for ServerApps of an earlier start that still
    run, and raises :class:`.run_lock.RunDriven` if one outlives it: settling a run that a
    live ServerApp drives would let two processes write its results and ledger.
    """
    locked = sorted(lock.parent for lock in folder.runs.glob(f"*/{LOCK_FILE}"))
    wait_undriven(locked, SERVERAPP_EXIT_WAIT_S)
    open_runs = _open_runs(folder)  # read after they stopped: each wrote its last word
    state = _link_state(folder.database)
    stopped = stop_flower_runs(state)
    trust = _Trust(folder.data(settings).resolve(), list(settings.trusted_launchers))
    settled = []
    for path, results in open_runs:
        from residency.server.run_ledger import RunLedger  # imports torch: only when needed

        run = path.parent.name
        ledger = RunLedger.open(folder.ledger, folder.ledger_key, run=run, job=results.job)
        flight, checkpointed = results.in_flight, _checkpoint_round(path.parent)
        if flight is not None and flight.round > checkpointed:
            for country in flight.countries:  # a round the checkpoint holds closed: ledgered
                ledger.unconfirmed(country, flight.round, UNCONFIRMED_REASON)
        flower_run = None if state is None else _flower_run(state, run, stopped)
        plan = (
            "the SuperLink database is gone, so it cannot resume"
            if state is None
            else _plan(results, checkpointed, flower_run, state, trust)
        )
        if isinstance(plan, _Plan) and state is not None and flower_run is not None:
            new_id = _resume(results, path.parent, flower_run, state, plan, folder.runs)
            reason = _resumed_reason(results, plan, new_id)
            results.status, results.resumed_as = RunStatus.RESUMED, new_id
        else:
            reason, new_id = _failed_reason(results, path.parent, str(plan)), None
            results.status = RunStatus.FAILED
        ledger.finished(results.status.value, reason)
        results.error, results.finished_at = reason, now()
        results.write(path)
        settled.append(EndedRun(run, reason, new_id))
    return settled


def prepared_resume(out_dir: Path) -> Results | None:
    """The results ``coordinator start`` prepared for a resumed run in ``out_dir``, if any."""
    path = out_dir / RESULTS_FILE
    if not path.exists():
        return None
    results = Results.model_validate_json(path.read_text("utf-8"))
    return results if results.status is RunStatus.QUEUED and results.resumed else None


def end_prepared(out_dir: Path, results: Results, reason: str) -> None:
    """End a resumed run that cannot start, so no later restart tries it again."""
    results.status, results.error, results.finished_at = RunStatus.FAILED, reason, now()
    results.write(out_dir / RESULTS_FILE)
