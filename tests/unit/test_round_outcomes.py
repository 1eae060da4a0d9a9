"""One coordinator round against scripted nodes: what reaches the average, results and ledger.

Every way a node's round can end is played through the coordinator's own loop (a stand-in
for Flower's Grid returns the replies): averaged; charged with a valid signed record but
rejected by validation; a signed count the reply's weight contradicts; refused with a coded
reason or with free text; failed; never answered. The tiny model makes a round take a second.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from ledger_factory import account, signed_record
from residency.client.reply import reply_metrics
from residency.common import wire
from residency.common.clock import now
from residency.common.config.job import Job, TrackingSection, load_job
from residency.common.errors import ConfigError
from residency.common.privacy.ledger import LEDGER_FILE, LedgerEntry
from residency.common.privacy.record import PrivacyRecord
from residency.common.privacy.signing import Signer, create_signer
from residency.common.refusal import Refusal, RefusalCode
from residency.server.checkpoint import load_checkpoint
from residency.server.federation import JobFailed, RunControl, _Federation, run_federation
from residency.server.observer import FederationObserver
from residency.server.results import (
    NodeRound,
    NodeStatus,
    Results,
    Resumed,
    RoundResult,
    RunStatus,
)
from residency.server.run_ledger import RunLedger
from residency.server.tracking import Tracker, local_uri
from toy_federation import write_toy_job

pytestmark = pytest.mark.unit

RUN = "7"
TIMEOUT_S = 0.5
LEAK = "Jane Doe, born 1961-04-02, /data/notes.csv line 17"
BUDGET = Refusal(RefusalCode.DATASET_BUDGET, {"budget": 8.0, "spent": 7.99, "needed": 2.41})

Answer = Callable[[Message, str, Signer], Message | None]
"""A node's reply to a training message (``None``: it never answers)."""


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages take run and node ids from the process' task identity."""
    monkeypatch.setattr(TaskIdentity, "_run_id", int(RUN))
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@dataclass
class ScriptedGrid:
    """The part of Flower's Grid the round loop uses; each node answers as scripted."""

    answers: dict[int, tuple[str, Answer]]
    signers: dict[str, Signer]
    waiting: dict[str, Message] = field(default_factory=dict)
    offline: set[int] = field(default_factory=set)
    pushed: list[Message] = field(default_factory=list)
    confirms: dict[str, Answer] = field(default_factory=dict)  # how a node answers a query

    def get_node_ids(self) -> list[int]:
        return sorted(set(self.answers) - self.offline)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            self.pushed.append(message)
            message_id = f"message-{message.metadata.dst_node_id}"
            message.metadata.__dict__["_message_id"] = message_id  # as the SuperLink does
            country, answer = self.answers[message.metadata.dst_node_id]
            if message.metadata.message_type == "query":  # every node confirms the job
                answer = self.confirms.get(country, _confirmed)
            reply = answer(message, country, self.signers[country])
            if reply is not None:
                self.waiting[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.waiting.pop(i) for i in list(message_ids) if i in self.waiting]


def _sent(message: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in message.content.array_records[wire.ARRAYS].items()}


def _trained(
    *, examples: int = 100, claimed: int | None = None, extra_tensor: bool = False
) -> Answer:
    """A node that trained and signed a record of ``examples`` (its reply may claim others)."""

    def answer(message: Message, country: str, signer: Signer) -> Message:
        server_round = int(message.content.config_records[wire.CONFIG][wire.SERVER_ROUND])
        rng = np.random.default_rng(sum(map(ord, country)))
        update = {
            k: (v + rng.standard_normal(v.shape).astype(np.float32))
            for k, v in _sent(message).items()
        }
        if extra_tensor:
            update["smuggled"] = np.ones(4, dtype=np.float32)
        signed = signed_record(
            signer,
            update,
            job="toy",
            run=RUN,
            server_round=server_round,
            country=country,
            examples=examples,
        )
        record = PrivacyRecord.model_validate_json(signed.body)
        metrics = dict(reply_metrics(record))  # what a node sends with this record
        if claimed is not None:
            metrics[wire.NUM_EXAMPLES] = claimed
        node = {
            wire.COUNTRY: country,
            wire.ACCOUNTANT: record.accountant.value,
            wire.DATASET_ACCOUNT: record.dataset,
            wire.VERSION: record.version,
        }
        content = RecordDict(
            {
                wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in update.items()}),
                wire.METRICS: MetricRecord(metrics),
                wire.NODE: ConfigRecord(node),
                wire.RECORD: ConfigRecord(
                    {wire.RECORD_BODY: signed.body, wire.RECORD_SIGNATURE: signed.signature}
                ),
            }
        )
        return Message(content, reply_to=message)

    return answer


def _error(code: int, reason: str) -> Answer:
    def answer(message: Message, country: str, signer: Signer) -> Message:
        return Message(Error(code, reason), reply_to=message)

    return answer


def _silent(message: Message, country: str, signer: Signer) -> None:
    return None


def _confirmed(message: Message, country: str, signer: Signer) -> Message:
    return Message(RecordDict({wire.NODE: ConfigRecord({wire.COUNTRY: country})}), reply_to=message)


SCRIPT: dict[str, Answer] = {
    "DE": _trained(examples=100),  # averaged
    "FR": _trained(examples=80, extra_tensor=True),  # signed and charged, fails validation
    "AT": _trained(examples=50, claimed=10**9),  # weight claimed above the signed count
    "ES": _error(wire.NODE_FAULT, LEAK),  # failed: maybe after its charge
    "IT": _error(wire.REFUSED, BUDGET.encode()),  # refused, before any charge
    "NL": _error(wire.REFUSED, LEAK),  # a refusal in free text
    "PL": _silent,  # never answers
}


@dataclass
class Coordinator:
    """A job over the script's countries, each admitted under its own node id."""

    job: Job
    grid: ScriptedGrid
    admitted: dict[int, str]
    ledger: RunLedger


def _coordinator(
    folder: Path, script: dict[str, Answer], *, rounds: int = 1, train: str = "min_nodes = 1"
) -> Coordinator:
    countries = tuple(script)
    path = write_toy_job(
        folder / "job",
        countries=countries,
        rounds=rounds,
        train=f"round_timeout_s = {TIMEOUT_S}\nnodes_timeout_s = {TIMEOUT_S}\n{train}",
    )
    signers = {c: create_signer(folder / "keys" / f"{c}.key", comment=c) for c in countries}
    admitted = {i: country for i, country in enumerate(countries, start=1)}
    grid = ScriptedGrid({i: (c, script[c]) for i, c in admitted.items()}, signers)
    ledger = RunLedger.open(folder / "ledger", folder / "keys" / "ledger.key", run=RUN, job="toy")
    return Coordinator(load_job(path), grid, admitted, ledger)


def _ledger(coordinator: Coordinator) -> list[LedgerEntry]:
    lines = (coordinator.ledger.folder / LEDGER_FILE).read_text("ascii").splitlines()
    return [LedgerEntry.model_validate_json(line) for line in lines]


@dataclass
class Played:
    """One round played: the coordinator's state, the arrays it sent, the round's result."""

    coordinator: Coordinator
    federation: _Federation
    sent: dict[str, np.ndarray]
    result: RoundResult


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Played:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TaskIdentity, "_run_id", int(RUN))
        patch.setattr(TaskIdentity, "_node_id", 0)
        patch.setattr(TaskIdentity, "_task_id", 1)
        coordinator = _coordinator(tmp_path_factory.mktemp("round"), SCRIPT)
        federation = _Federation(
            coordinator.grid,  # type: ignore[arg-type]
            coordinator.job,
            None,
            coordinator.admitted,
            RUN,
            coordinator.ledger,
        )
        sent = {k: v.numpy().copy() for k, v in federation.arrays.items()}
        return Played(coordinator, federation, sent, federation.play_round(1))


def test_spend_counts_every_valid_signed_record_not_only_the_averaged_ones(
    played: Played,
) -> None:
    privacy = played.federation.spend.summary()

    counts = {
        c: (p.rounds_averaged, p.rounds_charged, p.rounds_unconfirmed) for c, p in privacy.items()
    }
    assert counts == {
        "AT": (0, 0, 1),  # its reply contradicted its record: no valid record
        "DE": (1, 1, 0),
        "ES": (0, 0, 1),
        "FR": (0, 1, 0),  # charged, not averaged: it still spent its round
        "PL": (0, 0, 1),
    }  # IT and NL refused before any charge
    # The auditor's copy says the same: every round a node may have charged is accounted for.
    ledger = _ledger(played.coordinator)
    recorded = {(e.country, e.detail.get("averaged")) for e in ledger if e.kind == "record"}
    assert recorded == {("DE", True), ("FR", False)}
    unconfirmed = {e.country for e in ledger if e.kind == "unconfirmed"}
    assert unconfirmed == {"AT", "ES", "PL"}
    french = privacy["FR"]
    assert french.epsilon is not None
    assert french.epsilon > 0
    assert french.dataset_account == account("FR")
    assert (french.steps, french.epsilon_dataset, french.budget_epsilon) == (
        40,
        None,  # other coordinators' spend on the data is the node's ledger's, not this one's
        12.0,
    )
    for country in ("AT", "ES", "PL"):
        assert privacy[country].epsilon is None
        assert privacy[country].dataset_account is None


def test_only_the_signed_update_is_averaged_with_its_signed_weight(
    played: Played,
) -> None:
    rng = np.random.default_rng(sum(map(ord, "DE")))
    german = {
        k: v + rng.standard_normal(v.shape).astype(np.float32) for k, v in played.sent.items()
    }

    averaged = {k: v.numpy() for k, v in played.federation.arrays.items()}

    assert averaged.keys() == german.keys()
    for name, value in german.items():
        np.testing.assert_array_equal(averaged[name], value)
    statuses = {n.country: (n.status, n.reason) for n in played.result.nodes}
    assert statuses["DE"] == (NodeStatus.OK, None)
    assert statuses["FR"][0] is NodeStatus.REJECTED
    assert "1 unexpected" in (statuses["FR"][1] or "")  # counted, never named
    assert "smuggled" not in (statuses["FR"][1] or "")
    assert statuses["AT"] == (
        NodeStatus.REJECTED,
        "num-examples 1000000000 differs from the 50 examples in the signed privacy record",
    )
    records = [e for e in _ledger(played.coordinator) if e.kind == "record"]
    assert [(e.country, e.detail["averaged"]) for e in records] == [("DE", True), ("FR", False)]


def test_refusals_and_failures_are_rendered_never_shown_raw(
    played: Played,
) -> None:
    reasons = {n.country: (n.status, n.reason) for n in played.result.nodes}

    assert reasons["IT"] == (
        NodeStatus.REFUSED,
        "IT refused round 1: dataset budget 8.00, spent 7.99, round needs 2.41",
    )
    assert reasons["NL"] == (NodeStatus.REFUSED, "NL refused round 1 (reason not readable)")
    assert reasons["ES"] == (
        NodeStatus.FAILED,
        "ES failed round 1: node error (reason not readable)",
    )
    assert reasons["PL"][0] is NodeStatus.FAILED
    waited = r"PL sent no reply to round 1 within (0\.[5-9]|1\.[0-9]) s"  # the true wait
    assert re.fullmatch(waited, reasons["PL"][1])
    ledger = _ledger(played.coordinator)
    refusals = [(e.country, e.reason) for e in ledger if e.kind == "refusal"]
    assert sorted(refusals) == [("IT", reasons["IT"][1]), ("NL", reasons["NL"][1])]
    assert "Jane Doe" not in "".join(e.model_dump_json() for e in ledger)
    assert "Jane Doe" not in played.result.model_dump_json()


def test_a_failed_round_still_reports_what_it_charged(tmp_path: Path) -> None:
    coordinator = _coordinator(
        tmp_path, {"FR": SCRIPT["FR"], "IT": SCRIPT["IT"], "ES": SCRIPT["ES"]}
    )
    out = tmp_path / "out"

    with pytest.raises(JobFailed, match="round 1: valid updates from 0 of 3 countries"):
        run_federation(
            coordinator.grid,  # type: ignore[arg-type]
            coordinator.job,
            out_dir=out,
            admitted=coordinator.admitted,
            run=RUN,
            ledger=coordinator.ledger,
        )

    results = json.loads((out / "results.json").read_text("utf-8"))
    assert results["status"] == "failed"
    assert results["schema_version"] == 6
    privacy = results["privacy"]
    assert sorted(privacy) == ["ES", "FR"]
    assert privacy["FR"]["rounds_charged"] == 1
    assert privacy["FR"]["rounds_averaged"] == 0
    assert privacy["FR"]["epsilon"] > 0
    assert privacy["ES"]["rounds_unconfirmed"] == 1
    assert "Jane Doe" not in json.dumps(results)


def _run(
    coordinator: Coordinator,
    out: Path,
    *,
    observer: object = None,
    admitted: dict[int, str] | None = None,
    job: Job | None = None,
    resumed: Results | None = None,
    tracker: Tracker | None = None,
    control: RunControl | None = None,
) -> Results:
    return run_federation(
        coordinator.grid,  # type: ignore[arg-type]
        job or coordinator.job,
        out_dir=out,
        observer=observer,  # type: ignore[arg-type]
        admitted=coordinator.admitted if admitted is None else admitted,
        run=RUN,
        ledger=coordinator.ledger,
        resumed=resumed,
        tracker=tracker,
        control=control,
    )


def test_a_dead_node_is_dropped_by_country_and_the_job_completes(tmp_path: Path) -> None:
    """Round 1 needs everyone; later rounds close at the deadline with a majority."""
    script = {"DE": _trained(), "FR": _trained(), "ES": _trained()}
    coordinator = _coordinator(tmp_path, script, rounds=3, train="")
    grid = coordinator.grid
    spain = next(i for i, c in coordinator.admitted.items() if c == "ES")
    original = grid.push_messages

    def push(messages: Iterable[Message]) -> list[str]:
        sent = list(messages)
        rounds = {
            int(m.content.config_records[wire.CONFIG][wire.SERVER_ROUND])
            for m in sent
            if m.metadata.message_type == "train"
        }
        if rounds == {2}:  # ES dies after taking round 2, and its key stays offline
            grid.answers[spain] = ("ES", _silent)
        if rounds == {3}:
            assert spain not in {m.metadata.dst_node_id for m in sent}
        return original(sent)

    grid.push_messages = push  # type: ignore[method-assign]
    original_ids = grid.get_node_ids

    def node_ids() -> list[int]:
        if any(
            int(m.content.config_records[wire.CONFIG][wire.SERVER_ROUND]) == 2 for m in grid.pushed
        ):
            grid.offline.add(spain)
        return original_ids()

    grid.get_node_ids = node_ids  # type: ignore[method-assign]

    _run(coordinator, tmp_path / "out")

    results = json.loads((tmp_path / "out" / "results.json").read_text("utf-8"))
    assert results["status"] == "completed"
    assert [r["dropped"] for r in results["rounds"]] == [[], ["ES"], ["ES"]]
    assert {n["country"]: n["status"] for n in results["rounds"][1]["nodes"]}["ES"] == "failed"
    assert "ES" not in {n["country"] for n in results["rounds"][2]["nodes"]}
    rounds = [m for m in grid.pushed if not m.content.config_records[wire.CONFIG].get("job-ended")]
    assert {m.metadata.ttl for m in rounds} == {TIMEOUT_S}  # messages die with the round
    ended = [m for m in grid.pushed if m not in rounds]  # the job's end: its nodes free holds
    assert sorted(m.metadata.dst_node_id for m in ended) == sorted(coordinator.admitted)
    # The last completed round is kept, with the ledger position it follows (the run's end
    # entry came after it).
    saved = load_checkpoint(tmp_path / "out")
    checkpoint, arrays = saved.checkpoint, saved.arrays
    entries = _ledger(coordinator)
    assert checkpoint.round == 3
    assert (checkpoint.ledger_entries, checkpoint.ledger_head) == (
        len(entries) - 1,
        entries[-2].hash,
    )
    sent_last = _sent(rounds[-1])
    assert arrays.keys() == sent_last.keys()


class _PowerLoss(BaseException):
    """The coordinator host dies: nothing after this point runs."""


def test_a_resumed_run_goes_on_from_the_checkpoint_and_never_resends_the_lost_round(
    tmp_path: Path,
) -> None:
    script = {"DE": _trained(), "FR": _trained()}
    first = _coordinator(tmp_path / "first", script, rounds=3, train="")
    original = first.grid.push_messages

    def push(messages: Iterable[Message]) -> list[str]:
        sent = list(messages)
        ids = original(sent)
        if any(_round_of(m) == 2 and m.metadata.message_type == "train" for m in sent):
            raise _PowerLoss  # round 2 is in flight: nodes may charge it, nobody aggregates it
        return ids

    first.grid.push_messages = push  # type: ignore[method-assign]
    old = tmp_path / "runs" / "41"
    with pytest.raises(_PowerLoss):
        _run(first, old)
    crashed = Results.model_validate_json((old / "results.json").read_text("utf-8"))
    assert crashed.in_flight is not None
    assert crashed.in_flight.round == 2
    saved = load_checkpoint(old)
    assert saved.checkpoint.round == 1
    assert saved.kept is not None  # the best model so far is kept with the global one
    # What `coordinator start` prepares (server/recovery.py): the rounds so far, the checkpoint.
    new = tmp_path / "runs" / "42"
    shutil.copytree(old / "checkpoint", new / "checkpoint")
    prepared = crashed.model_copy(
        update={
            "status": RunStatus.QUEUED,
            "error": None,
            "finished_at": None,
            "in_flight": None,
            "resumed": [
                Resumed(from_run="41", next_round=3, lost_round=2, job_sha256="0" * 64, at=now())
            ],
        }
    )
    second = _coordinator(tmp_path / "second", script, rounds=3, train="")

    results = _run(second, new, resumed=prepared)

    assert results.status is RunStatus.COMPLETED
    assert [r.round for r in results.rounds] == [1, 3]  # round 2 is never sent again
    trained = [m for m in second.grid.pushed if m.metadata.message_type == "train"]
    assert {_round_of(m) for m in trained} == {3}
    for message in trained:  # round 3 starts from the model round 1 made
        for name, value in _sent(message).items():
            np.testing.assert_allclose(value, saved.arrays[name], rtol=1e-2, atol=1e-2)
    counts = {c: p.rounds_charged for c, p in results.privacy.items()}
    assert counts == {"DE": 2, "FR": 2}  # round 1's record before the crash, round 3's after
    assert results.final is not None
    assert results.final.round in {1, 3}
    [started] = [e for e in _ledger(second) if e.kind == "run-started"]
    assert started.detail["resumes"] == "41"


def _round_of(message: Message) -> int:
    return int(message.content.config_records[wire.CONFIG][wire.SERVER_ROUND])


def test_a_tracked_run_logs_each_round_and_each_countrys_epsilon_to_mlflow(
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    coordinator = _coordinator(tmp_path, {"DE": _trained(), "FR": _trained()}, rounds=2, train="")
    job = coordinator.job.model_copy(update={"tracking": TrackingSection(experiment="triage")})
    uri = local_uri(tmp_path / "tracking")

    results = _run(coordinator, tmp_path / "out", job=job, tracker=Tracker(job, uri=uri, run=RUN))

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("triage")
    assert experiment is not None
    [tracked] = client.search_runs([experiment.experiment_id])
    run_id = tracked.info.run_id
    assert tracked.info.status == "FINISHED"
    assert tracked.data.tags["residency.run"] == RUN
    assert tracked.data.params["target_epsilon"] == str(job.privacy.target_epsilon)
    accuracy = client.get_metric_history(run_id, "accuracy")
    assert [(m.step, m.value) for m in accuracy] == [(r.round, r.accuracy) for r in results.rounds]
    for country in ("DE", "FR"):
        spent = client.get_metric_history(run_id, f"epsilon/{country}")
        assert [m.step for m in spent] == [1, 2]
        assert spent[-1].value == pytest.approx(results.privacy[country].epsilon)
    assert {a.path for a in client.list_artifacts(run_id)} >= {"model", "results.json"}


def test_a_tracking_store_that_fails_is_logged_and_the_job_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = _coordinator(tmp_path, {"DE": _trained(), "FR": _trained()}, rounds=1, train="")
    job = coordinator.job.model_copy(update={"tracking": TrackingSection()})
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the store's folder would go", "utf-8")

    tracker = Tracker(job, uri=local_uri(blocked / "tracking"), run=RUN)
    results = _run(coordinator, tmp_path / "out", job=job, tracker=tracker)

    assert results.status is RunStatus.COMPLETED
    assert [r.message for r in caplog.records if "MLflow tracking stopped" in r.message]


def test_too_few_valid_updates_end_the_job_naming_who_was_missing(tmp_path: Path) -> None:
    script = {"DE": _trained(), "IT": SCRIPT["IT"], "PL": _silent}
    coordinator = _coordinator(tmp_path, script, train="min_nodes = 2")

    with pytest.raises(JobFailed) as failed:
        _run(coordinator, tmp_path / "out")

    message = str(failed.value)
    assert message.startswith("round 1: valid updates from 1 of 3 countries and the round needs 2")
    assert "IT: IT refused round 1: dataset budget 8.00" in message
    assert re.search(r"PL: PL sent no reply to round 1 within 0\.[5-9] s", message)
    results = json.loads((tmp_path / "out" / "results.json").read_text("utf-8"))
    assert results["status"] == "failed"
    assert results["privacy"]["DE"]["rounds_charged"] == 1  # its charge is still reported


def test_a_round_that_cannot_gather_enough_nodes_fails_at_its_deadline(tmp_path: Path) -> None:
    script = {"DE": _trained(), "FR": _trained(), "ES": _trained()}
    coordinator = _coordinator(tmp_path, script, train="min_nodes = 3")
    coordinator.grid.offline = {i for i, c in coordinator.admitted.items() if c != "DE"}

    with pytest.raises(JobFailed) as failed:
        _run(coordinator, tmp_path / "out")

    assert str(failed.value) == (
        "round 1: 1 of 3 countries connected after 0.5 s and the round needs 3 "
        "(missing: ES, FR); fix: start those nodes, or lower [train] min_nodes"
    )
    assert coordinator.grid.pushed == []  # nothing was sent, so nothing was charged


def test_a_waiting_round_says_who_it_waits_for_as_it_waits(tmp_path: Path) -> None:
    """Issue 26, point 4: `run` is no longer silent while a round waits for countries."""
    script = {"DE": _trained(), "FR": _trained(), "ES": _trained()}
    coordinator = _coordinator(tmp_path, script, train="min_nodes = 3")
    coordinator.grid.offline = {i for i, c in coordinator.admitted.items() if c != "DE"}
    waits: list[tuple[int, list[str], float, float]] = []

    class Seen:
        def waiting(
            self, server_round: int, missing: list[str], waited_s: float, limit_s: float
        ) -> None:
            waits.append((server_round, missing, waited_s, limit_s))

    with pytest.raises(JobFailed):
        _run(coordinator, tmp_path / "out", observer=Seen())
    assert waits[0][:2] == (1, ["ES", "FR"])  # said at once, before the deadline
    assert waits[0][2] < TIMEOUT_S
    assert waits[0][3] == TIMEOUT_S


def test_a_stop_between_rounds_sends_no_further_round(tmp_path: Path) -> None:
    """Ctrl-C after a round closed: the next round would be charged and never count."""
    script = {"DE": _trained(), "FR": _trained()}
    coordinator = _coordinator(tmp_path, script, rounds=3, train="")
    control = RunControl()

    class Stops(FederationObserver):
        def round_finished(self, result: RoundResult) -> None:
            control.stop.set()  # as Ctrl-C does, while round 1's checkpoint is written

    with pytest.raises(KeyboardInterrupt):
        _run(coordinator, tmp_path / "out", observer=Stops(), control=control)

    trained = {
        int(m.content.config_records[wire.CONFIG][wire.SERVER_ROUND])
        for m in coordinator.grid.pushed
        if m.metadata.message_type == "train"
    }
    assert trained == {1}
    results = json.loads((tmp_path / "out" / "results.json").read_text("utf-8"))
    assert (results["status"], len(results["rounds"])) == ("stopped", 1)
    assert not [e for e in _ledger(coordinator) if e.kind == "unconfirmed"]
    assert control.ended.is_set()


UNAFFORDABLE = Refusal(
    RefusalCode.JOB_UNAFFORDABLE, {"budget": 9.0, "committed": 8.0, "needed": 7.99}
)


def test_a_job_a_required_country_cannot_afford_is_refused_before_any_round(
    tmp_path: Path,
) -> None:
    """Issue 26, point 2: every node confirms the whole job before anyone is sent a round."""
    coordinator = _coordinator(tmp_path, {"DE": _trained(), "FR": _trained()}, train="")
    coordinator.grid.confirms = {"FR": _error(wire.REFUSED, UNAFFORDABLE.encode())}

    with pytest.raises(JobFailed) as failed:
        _run(coordinator, tmp_path / "out")

    assert str(failed.value) == (
        "round 1: 1 of 2 countries confirmed the whole job and the round needs 2 (FR refused "
        "round 1: dataset budget 9.00, 8.00 spent or held for other jobs, the whole job needs "
        "7.99 more); nothing was charged"
    )
    kinds = [m.metadata.message_type for m in coordinator.grid.pushed]
    assert "train" not in kinds  # nobody was sent a round, so nobody could charge one
    ended = [
        m for m in coordinator.grid.pushed if m.content.config_records[wire.CONFIG].get("job-ended")
    ]
    assert [coordinator.admitted[m.metadata.dst_node_id] for m in ended] == ["DE"]
    refusals = [(e.country, e.round) for e in _ledger(coordinator) if e.kind == "refusal"]
    assert refusals == [("FR", 1)]
    results = json.loads((tmp_path / "out" / "results.json").read_text("utf-8"))
    assert (results["status"], results["rounds"], results["privacy"]) == ("failed", [], {})


def test_a_country_that_declines_the_job_is_never_sent_a_round(tmp_path: Path) -> None:
    script = {"DE": _trained(), "FR": _trained(), "ES": _trained()}
    coordinator = _coordinator(tmp_path, script, rounds=2, train="min_nodes = 2")
    coordinator.grid.confirms = {"FR": _error(wire.REFUSED, UNAFFORDABLE.encode())}

    _run(coordinator, tmp_path / "out")

    trained = {
        coordinator.admitted[m.metadata.dst_node_id]
        for m in coordinator.grid.pushed
        if m.metadata.message_type == "train"
    }
    assert trained == {"DE", "ES"}
    results = json.loads((tmp_path / "out" / "results.json").read_text("utf-8"))
    assert results["status"] == "completed"
    first = {n["country"]: n["status"] for n in results["rounds"][0]["nodes"]}
    assert first == {"DE": "ok", "ES": "ok", "FR": "refused"}
    asked = [m for m in coordinator.grid.pushed if m.metadata.message_type == "query"]
    assert sum(coordinator.admitted[m.metadata.dst_node_id] == "FR" for m in asked) == 2
    assert "FR" not in results["privacy"]  # asked again in round 2, declined again, uncharged


def test_a_node_lost_mid_round_is_named_by_the_country_it_confirmed_as(tmp_path: Path) -> None:
    """Issue 26, point 3: no `node-N` country in tallies or the ledger, even unadmitted."""
    coordinator = _coordinator(tmp_path, {"DE": _trained(), "FR": _silent}, train="min_nodes = 1")
    _run(coordinator, tmp_path / "out", admitted={})  # as in simulation
    text = (tmp_path / "out" / "results.json").read_text("utf-8")
    results = json.loads(text)
    assert results["privacy"]["FR"]["rounds_unconfirmed"] == 1
    assert "node-" not in text
    unconfirmed = [e.country for e in _ledger(coordinator) if e.kind == "unconfirmed"]
    assert unconfirmed == ["FR"]


def test_two_countries_survive_one_of_them_restarting_by_default(tmp_path: Path) -> None:
    """Issue 26, point 3: with two countries, a node down for one round no longer ends the job."""
    trained = _trained()

    def restarting(message: Message, country: str, signer: Signer) -> Message | None:
        server_round = int(message.content.config_records[wire.CONFIG][wire.SERVER_ROUND])
        return None if server_round == 2 else trained(message, country, signer)

    coordinator = _coordinator(tmp_path, {"DE": _trained(), "FR": restarting}, rounds=3, train="")
    _run(coordinator, tmp_path / "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text("utf-8"))
    assert results["status"] == "completed"
    assert [r["dropped"] for r in results["rounds"]] == [[], ["FR"], []]
    assert results["privacy"]["FR"]["rounds_unconfirmed"] == 1


def test_a_silent_node_is_named_when_its_round_closes(tmp_path: Path) -> None:
    """The reason line comes as the round closes, with the wait it really took."""
    coordinator = _coordinator(tmp_path, {"DE": _trained(), "PL": _silent})
    said: list[tuple[str, str]] = []

    class Seen:
        def round_started(self, server_round: int, nodes: int, update: object) -> None:
            said.append(("started", str(server_round)))

        def node_finished(self, server_round: int, report: NodeRound) -> None:
            said.append((report.country, report.reason or "ok"))

        def round_finished(self, result: RoundResult) -> None:
            said.append(("finished", str(result.round)))

    _run(coordinator, tmp_path / "out", observer=Seen())
    assert [s[0] for s in said] == ["started", "DE", "PL", "finished"]
    assert re.fullmatch(r"PL sent no reply to round 1 within 0\.[5-9] s", said[2][1])


def test_min_nodes_default_and_bounds(tmp_path: Path) -> None:
    job = load_job(write_toy_job(tmp_path / "a", countries=("DE", "FR", "ES", "IT")))
    assert [job.train.required_nodes(4, r) for r in (1, 2, 3)] == [3, 3, 3]
    assert [job.train.required_to_send(4, r) for r in (1, 2)] == [4, 3]
    # One node may restart in any round at every size: never every country after the start.
    for countries in range(1, 21):
        for server_round in (1, 2):
            needed = job.train.required_nodes(countries, server_round)
            assert needed == max(1, countries - 1) or needed == countries // 2 + 1
            assert needed <= max(1, countries - 1)
    assert job.train.required_nodes(2, 2) == 1
    assert job.train.required_nodes(20, 2) == 11
    assert job.train.model_copy(update={"min_nodes": 2}).required_nodes(4, 1) == 2
    assert job.train.model_copy(update={"min_nodes": 2}).required_to_send(4, 1) == 2
    with pytest.raises(
        ConfigError, match=r"job\.toml: train\.min_nodes: 3 but the job names 2 countries"
    ):
        load_job(write_toy_job(tmp_path / "b", countries=("DE", "FR"), train="min_nodes = 3"))


def test_an_error_the_superlink_answers_for_an_unreachable_node_is_that_nodes(
    tmp_path: Path,
) -> None:
    """Flower answers a message it could not deliver from its own node id: no node replied."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

    def unreachable(message: Message, country: str, signer: Signer) -> Message | None:
        server_round = int(message.content.config_records[wire.CONFIG][wire.SERVER_ROUND])
        if server_round != 2:
            return _trained()(message, country, signer)
        reply = create_message_error_unavailable_res_message(message.metadata, "node_unavail")
        assert reply.metadata.src_node_id == SUPERLINK_NODE_ID
        return reply

    coordinator = _coordinator(tmp_path, {"DE": _trained(), "FR": unreachable}, rounds=3, train="")
    _run(coordinator, tmp_path / "out")
    text = (tmp_path / "out" / "results.json").read_text("utf-8")
    results = json.loads(text)
    assert results["status"] == "completed"
    assert "node-" not in text  # no unknown node in the tallies
    assert {n["country"]: n["status"] for n in results["rounds"][1]["nodes"]} == {
        "DE": "ok",
        "FR": "failed",
    }
    assert results["rounds"][1]["dropped"] == ["FR"]  # it sent no reply: the SuperLink did
    assert set(results["privacy"]) == {"DE", "FR"}
