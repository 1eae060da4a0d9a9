"""The coordinator's round loop on top of a Flower ``Grid`` and strategy.

Flower's ``Strategy.start`` waits for all replies at once; this loop uses the same
aggregation but pulls replies as they arrive, so progress is shown per node and results are
written after every round. Its parts: the global model (:mod:`.global_model`), who takes
part (:mod:`.roster`), what one reply says (:mod:`.replies`), and Flower's aggregation
behind reply validation (:mod:`.strategy`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from residency.common.clock import now
from residency.common.config.job import Job
from residency.common.config.signed_job import SignedJob
from residency.common.errors import InvalidUpdate
from residency.common.evaluation import Scores
from residency.common.updates.traits import traits_for
from residency.common.version import __version__
from residency.server.checkpoint import load_checkpoint
from residency.server.global_model import GlobalModel
from residency.server.node_errors import timeout_sentence
from residency.server.observer import FederationObserver
from residency.server.record_check import Received, received_record
from residency.server.replies import node_round
from residency.server.results import (
    RESULTS_FILE,
    InFlight,
    NodeRound,
    NodeStatus,
    Results,
    RoundResult,
    RunStatus,
)
from residency.server.roster import JobFailed, Roster, check_admitted, check_stop, exchange
from residency.server.run_ledger import RunLedger
from residency.server.spend_tally import SpendTally
from residency.server.strategy import ValidatingStrategy
from residency.server.tracking import Tracker

__all__ = ["FederationObserver", "JobFailed", "RunControl", "run_federation"]

STOPPED_MID_ROUND = "the run stopped before the round closed; the node may have charged it"


@dataclass
class RunControl:
    """Stop a run from outside its thread, and wait until its end is written.

    Flower's simulation runs the ServerApp in a daemon thread that Ctrl-C does not reach and
    the interpreter abandons at exit: without this, ``results.json`` would stay ``running``
    and the ledger would never get the run's end.
    """

    stop: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)


Sending = Callable[[int, list[str]], None]
"""Told (round, countries) just before a round's messages leave, to persist it first."""


class _ScoreFields(TypedDict):
    accuracy: float | None
    macro_f1: float | None
    test_loss: float | None


def _scores_fields(scores: Scores | None) -> _ScoreFields:
    if scores is None:
        return {"accuracy": None, "macro_f1": None, "test_loss": None}
    return {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1, "test_loss": scores.loss}


@dataclass
class _Federation:
    """One run on the coordinator: its global model, roster, strategy and spend tally."""

    grid: Grid
    job: Job
    observer: FederationObserver | None
    admitted: Mapping[int, str]
    run: str
    ledger: RunLedger | None
    signed: SignedJob | None = None
    sending: Sending | None = None

    def __post_init__(self) -> None:
        train = self.job.train
        self.strategy = ValidatingStrategy(
            combine=traits_for(train.round_update(1)).combine,
            aggregation=train.aggregation,
            trim_fraction=train.trim_fraction,
            max_update_norm=train.max_update_norm,
        )
        self.global_model = GlobalModel(self.job, self.signed, self.strategy)
        self.roster = Roster(
            self.grid,
            self.job,
            self.admitted,
            self.observer,
            plan=lambda: self.global_model.config,
            ledger=self.ledger,
        )
        self.spend = SpendTally(self.job)

    @property
    def arrays(self) -> ArrayRecord:
        """The global trainable arrays (what the next round sends)."""
        return self.global_model.arrays

    def play_round(self, server_round: int) -> RoundResult:
        """Send the global model, collect replies, aggregate the valid ones, score."""
        started = time.perf_counter()
        strategy = self.strategy
        roster, model = self.roster, self.global_model
        roster.current_round = server_round
        node_ids, absent = roster.round_nodes(server_round)
        node_ids, refused, silent = roster.confirm_nodes(server_round, node_ids)
        roster.require_confirmed(server_round, node_ids, refused, [*absent, *silent])
        absent = [*absent, *silent]
        messages = strategy.train_messages(
            server_round,
            model.outgoing(),
            model.config,
            node_ids,
            ttl_s=self.job.train.round_timeout_s,
        )
        if self.sending is not None:
            self.sending(server_round, [roster.countries.of(i) for i in node_ids])
        if self.observer:
            self.observer.round_started(
                server_round,
                len(messages),
                self.job.train.round_update(server_round, refine=model.refining),
            )
        reports: dict[int, NodeRound] = dict(refused)  # declined before the round, uncharged
        received: dict[int, Received] = {}

        def on_reply(reply: Message, bytes_down: int) -> None:
            node_id = reply.metadata.src_node_id
            report = node_round(reply, bytes_down, roster.countries, server_round=server_round)
            if report.status is NodeStatus.OK:
                try:
                    received[node_id] = received_record(
                        reply.content,
                        job=self.job.name,
                        run=self.run,
                        server_round=server_round,
                        country=report.country,
                        job_sha256=None if self.signed is None else self.signed.sha256,
                    )
                except InvalidUpdate as exc:
                    report.status, report.reason = NodeStatus.REJECTED, str(exc)
            if report.status is NodeStatus.OK:  # its record holds: can its update be averaged?
                rejected = strategy.check(reply, server_round)
                if rejected is not None:
                    report.status, report.reason = NodeStatus.REJECTED, rejected
            reports[node_id] = report  # the reply's one verdict
            if self.observer:
                self.observer.node_finished(server_round, report)

        timeout_s = self.job.train.round_timeout_s
        sent_at = time.monotonic()
        replies = exchange(
            self.grid, messages, timeout_s=timeout_s, on_reply=on_reply, stop=roster.stop
        )
        check_stop(roster.stop)  # replies cut short by the stop, not by the nodes
        waited = time.monotonic() - sent_at
        dropped = set(absent)
        for message in messages:
            node_id = message.metadata.dst_node_id
            if node_id not in reports:
                country = roster.countries.of(node_id)
                reports[node_id] = NodeRound(
                    country=country,
                    status=NodeStatus.FAILED,
                    reason=timeout_sentence(country, server_round, waited),
                )
                dropped.add(country)
                if self.observer:  # said as the round closes, not after the next one
                    self.observer.node_finished(server_round, reports[node_id])
        valid = [r for r in replies if reports[r.metadata.src_node_id].status is NodeStatus.OK]
        new_arrays, _ = strategy.aggregate_train(server_round, valid, checked=True)
        self._to_ledger(server_round, received, reports)
        self._tally(received, reports)
        roster.require_quorum(server_round, len(strategy.accepted), reports, absent)
        assert new_arrays is not None  # the quorum is at least one valid update
        model.absorb(new_arrays)
        result = RoundResult(
            round=server_round,
            **_scores_fields(model.score()),
            held_out_accuracy=model.keep_if_better(server_round),
            refine=model.refining,
            nodes=sorted(reports.values(), key=lambda r: r.country),
            bytes_up=sum(r.bytes_up for r in reports.values()),
            bytes_down=sum(r.bytes_down for r in reports.values()),
            seconds=time.perf_counter() - started,
            dropped=sorted(dropped),
        )
        result.update = self.job.train.round_update(server_round, refine=model.refining).value
        return result

    def _tally(self, received: Mapping[int, Received], reports: Mapping[int, NodeRound]) -> None:
        """Count every node sent this round: charged (with a valid record) or unconfirmed.

        A refusal comes before any charge; every other outcome without a valid signed record
        (a timeout, a fault, a reply rejected before its record could be checked) may follow
        one, so it counts as unconfirmed for the country the node is known as.
        """
        averaged = {reply.metadata.src_node_id for reply in self.strategy.accepted}
        for node_id, report in reports.items():
            got = received.get(node_id)
            if got is not None:
                self.spend.charged(got.record, averaged=node_id in averaged)
                report.privacy_unit = got.record.privacy_unit.value
            elif report.status is not NodeStatus.REFUSED:
                self.spend.unconfirmed(report.country)

    def _to_ledger(
        self,
        server_round: int,
        received: Mapping[int, Received],
        reports: Mapping[int, NodeRound],
    ) -> None:
        """Every signed record (averaged or not), refusal and unconfirmed round of the round."""
        if self.ledger is None:
            return
        averaged = {reply.metadata.src_node_id for reply in self.strategy.accepted}
        for node_id, got in sorted(received.items()):
            report = reports[node_id]  # a valid record, its update averaged or rejected
            reason = report.reason if report.status is NodeStatus.REJECTED else None
            self.ledger.record(got, averaged=node_id in averaged, reason=reason)
        for node_id, report in sorted(reports.items()):
            if report.status is NodeStatus.REFUSED:
                self.ledger.refusal(report.country, server_round, report.reason or "")
            elif node_id not in received:
                reason = report.reason or "no valid signed record"
                self.ledger.unconfirmed(report.country, server_round, reason)


def run_federation(
    grid: Grid,
    job: Job,
    *,
    out_dir: Path,
    observer: FederationObserver | None = None,
    admitted: Mapping[int, str] | None = None,
    run: str = "0",
    ledger: RunLedger | None = None,
    signed: SignedJob | None = None,
    control: RunControl | None = None,
    resumed: Results | None = None,
    tracker: Tracker | None = None,
    shutting_down: Callable[[], bool] | None = None,
) -> Results:
    """Run every round of ``job``; write results and the final model.

    ``admitted`` maps node ids to the country each key was admitted for (deployment): only
    those countries' nodes take part, and a node reporting another country is rejected.
    ``run`` is Flower's run id, which every node's signed record must name; ``ledger``
    receives the run's privacy events. ``signed`` is the job as its launcher signed it: every
    round plan relays it, and each node's record must name its hash. ``control`` lets the
    process hosting the ServerApp's thread stop the run and wait until it is written.
    ``resumed`` is the results ``coordinator start`` prepared in ``out_dir`` for a run that
    continues an interrupted one (:mod:`residency.server.recovery`): the rounds go on from
    its last ``resumed`` entry, from the checkpoint beside it. ``tracker`` logs what
    ``results.json`` holds to MLflow as it is written (:mod:`residency.server.tracking`).
    ``shutting_down`` says whether a stop signal is the coordinator's own shutdown: the run is
    then left as it stands (running, its in-flight round and the nodes' holds kept) for the
    next ``coordinator start`` to resume, instead of ending ``stopped``.
    """
    federation = _Federation(grid, job, observer, dict(admitted or {}), run, ledger, signed)
    model, roster = federation.global_model, federation.roster
    results_path = out_dir / RESULTS_FILE

    def sending(server_round: int, countries: list[str]) -> None:
        results.in_flight = InFlight(
            round=server_round, countries=sorted(countries), refine=model.refining
        )
        results.write(results_path)

    federation.sending = sending
    roster.stop = None if control is None else control.stop  # stops every wait of the run
    first_round, continues = 1, None
    if resumed is not None and resumed.resumed:
        results, continues = resumed, resumed.resumed[-1]
        results.status, first_round = RunStatus.RUNNING, continues.next_round
        model.restore(load_checkpoint(out_dir), results.rounds, first_round)
        federation.spend = SpendTally(job, carried=results.privacy)
    else:
        results = Results(
            job=job.name,
            residency_version=__version__,
            started_at=now(),
            config=job.model_dump(mode="json"),
            baseline=RoundResult(
                round=0,
                **_scores_fields(model.score()),
                nodes=[],
                bytes_up=0,
                bytes_down=0,
                seconds=0.0,
            ),
        )
    results.write(results_path)
    if tracker is not None:
        tracker.started(results)
    if ledger is not None:
        ledger.started(job, resumes=None if continues is None else continues.from_run)
    try:
        check_admitted(job, roster.countries)
        for server_round in range(first_round, job.train.server_rounds + 1):
            check_stop(roster.stop)  # asked between rounds: send none that cannot count
            if model.refine_next(server_round):
                model.refine_round()
            result = federation.play_round(server_round)
            results.rounds.append(result)
            results.in_flight = None
            results.privacy = federation.spend.summary()
            position = None if ledger is None else ledger.ledger.head()
            model.checkpoint(out_dir, server_round, position)  # before the next round is sent
            results.write(results_path)
            if tracker is not None:
                tracker.round(results, result)
            if observer:
                observer.round_finished(result)
            if result.refine:
                break  # the refined release spent the job's budget
        results.final = model.finish(out_dir)
        results.status = RunStatus.COMPLETED
    except BaseException as exc:
        if shutting_down is not None and shutting_down():
            raise  # left running (a signal, or its SuperLink gone): the next start resumes it
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            results.status = RunStatus.STOPPED
            results.error = "stopped by a signal (runs stop, Ctrl-C)"
            if ledger is not None and results.in_flight is not None:  # they may have charged it
                for country in results.in_flight.countries:
                    ledger.unconfirmed(country, results.in_flight.round, STOPPED_MID_ROUND)
        else:
            results.status, results.error = RunStatus.FAILED, str(exc) or type(exc).__name__
            if isinstance(exc, JobFailed):  # raised before a round's messages left, or after
                results.in_flight = None
        raise
    finally:
        results.privacy = federation.spend.summary()  # a failed round's charges count too
        if results.status is RunStatus.RUNNING:  # the coordinator shuts down: hold everything
            results.write(results_path)
        else:
            _end(results, out_dir, ledger=ledger, tracker=tracker, roster=roster)
        if control is not None:
            control.ended.set()
    return results


def _end(
    results: Results,
    out_dir: Path,
    *,
    ledger: RunLedger | None,
    tracker: Tracker | None,
    roster: Roster,
) -> None:
    """Write how the run ended, tell the ledger and the tracker, and free the nodes' holds."""
    results.finished_at = now()
    results.write(out_dir / RESULTS_FILE)
    if ledger is not None:
        ledger.finished(results.status.value, results.error)
    if tracker is not None:
        tracker.finished(results, out_dir)
    if results.status is not RunStatus.STOPPED:  # a stopped run's grid is going away
        roster.end_holds()
