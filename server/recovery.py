"""What ``coordinator start`` settles before its SuperLink serves: runs a crash left open.

A coordinator that died (SIGKILL, power loss) leaves runs that no ServerApp drives any more:
``results.json`` says ``running``, the ledger has no end entry, and the SuperLink database
still queues the round's undelivered messages, which nodes would pull, charge for and train
once the SuperLink is back, for a round nobody aggregates. Before the new SuperLink accepts a
connection, each such run is stopped in Flower's own state (``LinkState.stop_run`` deletes its
messages, as ``runs stop`` does), its in-flight round is written to the ledger as unconfirmed
for every country it was sent to (they may have charged before the crash), and the run ends
as ``failed`` with the reason. A run cannot resume yet: nodes account a job per Flower run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from residency.common.clock import now
from residency.server.checkpoint import CHECKPOINT_DIR, STATE_FILE
from residency.server.coordinator import CoordinatorDir
from residency.server.results import RESULTS_FILE, Results, RunStatus

log = logging.getLogger("residency.coordinator")

UNCONFIRMED_REASON = "the coordinator stopped before the round closed; the node may have charged it"


@dataclass(frozen=True)
class EndedRun:
    """A run the restart ended, and why."""

    run: str
    reason: str


def stop_flower_runs(database: Path) -> list[int]:
    """Stop every started, unfinished run in the SuperLink database; their messages go too.

    Called while no SuperLink runs, so no ServerApp can still be driving them.
    """
    if not database.exists():
        return []
    from flwr.common.constant import Status
    from flwr.superlink.config_loader import (
        get_federation_manager,
        get_objectstore_linkstate_factories,
    )

    _, factory = get_objectstore_linkstate_factories(str(database), get_federation_manager())
    state = factory.state()
    open_runs = state.get_run_info(statuses=[Status.STARTING, Status.RUNNING])
    stopped = [run.run_id for run in open_runs if state.stop_run(run.run_id)]
    for run_id in stopped:
        log.warning("run %d was left open by a coordinator that stopped; stopped it", run_id)
    return stopped


def _reason(results: Results, folder: Path) -> str:
    done = len(results.rounds)
    where = (
        f"during round {results.in_flight.round}"
        if results.in_flight is not None
        else f"after {done} completed round{'s' if done != 1 else ''}"
    )
    kept = ""
    if (folder / CHECKPOINT_DIR / STATE_FILE).exists():
        kept = f"; {CHECKPOINT_DIR}/ holds the global model of the last completed round"
    return (
        f"the coordinator stopped {where}; `residency coordinator start` ended the run "
        f"(a run cannot resume: launch the job again{kept})"
    )


def end_open_runs(folder: CoordinatorDir) -> list[EndedRun]:
    """End every run the coordinator's outputs still show as running (see module doc)."""
    stop_flower_runs(folder.database)
    ended = []
    for path in sorted(folder.runs.glob(f"*/{RESULTS_FILE}")):
        results = Results.model_validate_json(path.read_text("utf-8"))
        if results.status is not RunStatus.RUNNING:
            continue
        from residency.server.run_ledger import RunLedger  # imports torch: only when needed

        run, reason = path.parent.name, _reason(results, path.parent)
        ledger = RunLedger.open(folder.ledger, folder.ledger_key, run=run, job=results.job)
        if results.in_flight is not None:
            for country in results.in_flight.countries:
                ledger.unconfirmed(country, results.in_flight.round, UNCONFIRMED_REASON)
        ledger.finished(RunStatus.FAILED.value, reason)
        results.status, results.error, results.finished_at = RunStatus.FAILED, reason, now()
        results.write(path)
        ended.append(EndedRun(run, reason))
    return ended
