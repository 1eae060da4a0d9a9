"""The coordinator's round loop on top of a Flower ``Grid`` and strategy.

Flower's ``Strategy.start`` waits for all replies at once; this loop uses the same strategy
(``configure_train`` / ``aggregate_train``) but pulls replies as they arrive, so progress is
shown per node and results are written after every round.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypedDict

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from torch.utils.data import TensorDataset

from residency.common import wire
from residency.common.classifier_head import classifier_head
from residency.common.clock import now
from residency.common.config.job import Job, UpdateKind, refinable
from residency.common.config.round_plan import (
    FEATURE_CENTRE_BOUND,
    FEATURE_SCALE_FLOOR,
    feature_transform_bytes,
    round_config,
)
from residency.common.config.signed_job import SignedJob
from residency.common.data.encoding import encode
from residency.common.data.readers import read_labeled_texts
from residency.common.device import pick_compute
from residency.common.errors import InvalidUpdate
from residency.common.evaluation import Scores, evaluate
from residency.common.feature_scale import public_feature_scale
from residency.common.label_prior import label_prior
from residency.common.model import (
    ModelSpec,
    base_fingerprint,
    build_classifier,
    export_hf,
    load_tokenizer,
    load_trainable_state,
    on_the_wire,
    round_one_arrays,
    set_feature_transform,
    trainable_state,
)
from residency.common.updates import Combine, method_for, prototypes
from residency.common.version import __version__
from residency.server.checkpoint import Saved, load_checkpoint, save_checkpoint
from residency.server.held_out import KeptModel, better, refines, split_rows
from residency.server.node_errors import error_sentence, timeout_sentence
from residency.server.record_check import Received, received_record
from residency.server.results import (
    RESULTS_FILE,
    ClassResult,
    FinalResult,
    InFlight,
    NodeRound,
    NodeStatus,
    Results,
    RoundResult,
    RunStatus,
)
from residency.server.run_ledger import RunLedger
from residency.server.spend_tally import SpendTally
from residency.server.strategy import ValidatingFedAvg
from residency.server.tracking import Tracker

log = logging.getLogger("residency.coordinator")

MODEL_DIR = "model"


WAITING_EVERY_S = 15.0
"""How often a round still waiting for its countries says who is missing."""

END_HOLDS_S = 10.0
"""How long the coordinator waits for nodes to hear that a job ended (they free its hold)."""

STOPPED_MID_ROUND = "the run stopped before the round closed; the node may have charged it"


class JobFailed(RuntimeError):
    """The federation cannot continue (no valid update in a round, or nodes never came)."""


@dataclass
class RunControl:
    """Stop a run from outside its thread, and wait until its end is written.

    Flower's simulation runs the ServerApp in a daemon thread that Ctrl-C does not reach and
    the interpreter abandons at exit: without this, ``results.json`` would stay ``running``
    and the ledger would never get the run's end.
    """

    stop: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)


class FederationObserver(Protocol):
    """Receives progress as it happens (the CLI renders it; tests record it)."""

    def round_started(self, server_round: int, nodes: int, update: UpdateKind) -> None:
        """A round's messages went out to ``nodes`` nodes, asking for ``update``."""

    def node_finished(self, server_round: int, report: NodeRound) -> None:
        """One node's reply arrived (or it failed)."""

    def round_finished(self, result: RoundResult) -> None:
        """The round was aggregated and the global model scored."""

    def waiting(
        self, server_round: int, missing: list[str], waited_s: float, limit_s: float
    ) -> None:
        """Round ``server_round`` waits for ``missing`` to connect, ``waited_s`` of ``limit_s``."""


Sending = Callable[[int, list[str]], None]
"""Told (round, countries) just before a round's messages leave, to persist it first."""


@dataclass
class _Countries:
    """Node id to country: admitted ones (deployment) are fixed, others learned from replies."""

    names: dict[int, str]
    admitted: Mapping[int, str]

    def of(self, node_id: int) -> str:
        return self.admitted.get(node_id) or self.names.get(node_id, f"node-{node_id}")

    def impostor(self, node_id: int, reported: str) -> str | None:
        """Why a reply's country contradicts the node's admission, if it does."""
        expected = self.admitted.get(node_id)
        if expected is None or expected == reported:
            return None
        return f"reports country {reported} but its key was admitted for {expected}"


def _record_bytes(content: RecordDict) -> int:
    return sum(
        record.count_bytes()
        for records in (content.array_records, content.metric_records, content.config_records)
        for record in records.values()
    )


def _node_round(
    reply: Message, bytes_down: int, countries: _Countries, *, server_round: int
) -> NodeRound:
    """What one reply says about its node's round; an error's own text is never kept."""
    node_id = reply.metadata.src_node_id
    if reply.has_error():
        code = reply.error.code
        country = countries.of(node_id)
        return NodeRound(
            country=country,
            status=NodeStatus.REFUSED if code == wire.REFUSED else NodeStatus.FAILED,
            bytes_down=bytes_down,
            reason=error_sentence(
                code, reply.error.reason or "", country=country, server_round=server_round
            ),
        )
    content = reply.content
    node = content.config_records.get(wire.NODE, ConfigRecord())
    reported = node.get(wire.COUNTRY, countries.of(node_id))
    country = reported if isinstance(reported, str) else ""
    if wire.COUNTRY in node and not wire.REPLY_NODE_FIELDS[wire.COUNTRY].fullmatch(country):
        problem: str | None = "reports a malformed country code"  # its text is not shown
    else:
        problem = countries.impostor(node_id, country)
    if problem is not None:
        return NodeRound(
            country=countries.of(node_id),
            status=NodeStatus.REJECTED,
            bytes_up=_record_bytes(content),
            bytes_down=bytes_down,
            reason=problem,
        )
    countries.names[node_id] = country
    metrics = content.metric_records.get(wire.METRICS)

    def metric(key: str) -> float | None:
        value = metrics.get(key) if metrics is not None else None
        return float(value) if isinstance(value, int | float) else None

    examples, steps = metric(wire.NUM_EXAMPLES), metric(wire.STEPS)
    return NodeRound(
        country=country,
        status=NodeStatus.OK,
        examples=None if examples is None else int(examples),
        epsilon=metric(wire.EPSILON),
        epsilon_round=metric(wire.EPSILON_ROUND),
        noise_multiplier=metric(wire.NOISE_MULTIPLIER),
        sample_rate=metric(wire.SAMPLE_RATE),
        steps=None if steps is None else int(steps),
        bytes_up=_record_bytes(content),
        bytes_down=bytes_down,
    )


def _check_admitted(job: Job, countries: _Countries) -> None:
    """In a deployment, every country the job names must have an admitted node key."""
    if not countries.admitted:
        return
    missing = {node.country for node in job.nodes} - set(countries.admitted.values())
    if missing:
        raise JobFailed(
            f"no admitted node for {', '.join(sorted(missing))}; fix: `residency coordinator "
            "admit node.pub --country XX` for each country the job names"
        )


def _pause(seconds: float, stop: threading.Event | None) -> None:
    """Sleep between polls; a stop request (Ctrl-C of a simulation) ends the run as stopped."""
    if stop is not None and stop.wait(seconds):
        raise KeyboardInterrupt
    if stop is None:
        time.sleep(seconds)


def _exchange(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout_s: float,
    on_reply: Callable[[Message, int], None],
    stop: threading.Event | None = None,
) -> list[Message]:
    """Push messages and pull replies until all arrive or the round times out."""
    sizes: dict[str, int] = {}
    outgoing = list(messages)
    ids = list(grid.push_messages(outgoing))
    for message_id, message in zip(ids, outgoing, strict=True):
        sizes[message_id] = _record_bytes(message.content)
    pending = set(ids)
    replies: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(pending):
            pending.discard(reply.metadata.reply_to_message_id)
            replies.append(reply)
            on_reply(reply, sizes.get(reply.metadata.reply_to_message_id, 0))
        if pending:
            _pause(0.1, stop)
    if pending:
        log.warning("%d node(s) did not reply within %g s", len(pending), timeout_s)
    return replies


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
    """State of one run on the coordinator: global model, strategy and what nodes reported."""

    grid: Grid
    job: Job
    nodes: int
    observer: FederationObserver | None
    admitted: Mapping[int, str]
    run: str
    ledger: RunLedger | None
    signed: SignedJob | None = None
    sending: Sending | None = None
    stop: threading.Event | None = None  # RunControl.stop

    def __post_init__(self) -> None:
        self.compute = pick_compute()
        spec = ModelSpec.from_job(self.job)
        self.model = build_classifier(spec)
        self.tokenizer = load_tokenizer(spec.source)
        self.labels = tuple(self.job.data.labels)
        self.fingerprint = base_fingerprint(self.model)
        self.arrays = self._initial_arrays()
        self.config = ConfigRecord(
            round_config(self.job, base_fingerprint=self.fingerprint, signed=self.signed)
        )
        self.strategy = ValidatingFedAvg(
            nodes=self.nodes,
            combine=method_for(self.job.train.round_update(1)).combine,
            aggregation=self.job.train.aggregation,
            trim_fraction=self.job.train.trim_fraction,
            max_update_norm=self.job.train.max_update_norm,
        )
        self.countries = _Countries({}, self.admitted)
        self.spend = SpendTally(self.job)
        self.held_out, self.test = self._load_test()
        self.held_out_scores: dict[int, float] = {}
        self.kept: KeptModel | None = None
        self.confirmed: set[int] = set()  # nodes that confirmed the whole job (and hold it)
        self.current_round = 1

    @property
    def refining(self) -> bool:
        """Whether this round is the warm start's release again (the job's last round)."""
        return self.strategy.refining

    @functools.cached_property
    def prior(self) -> torch.Tensor:
        """Each label's public prior (:mod:`residency.common.label_prior`), encoded once."""
        return label_prior(self.model, self.tokenizer, self.labels, compute=self.compute)

    def refine_next(self, server_round: int) -> bool:
        """Whether round ``server_round`` refines the release (:func:`held_out.refines`)."""
        train = self.job.train
        if server_round != 3 or not refinable(train.update, train.warm_start):
            return False
        release, trained = self.held_out_scores.get(1), self.held_out_scores.get(2)
        return release is not None and trained is not None and refines(release, trained)

    def _initial_arrays(self) -> ArrayRecord:
        """What goes out in round 1: the trainable tensors, or a release's empty template."""
        arrays = round_one_arrays(self.model, self.job.train.round_update(1))
        return ArrayRecord({name: Array(value) for name, value in arrays.items()})

    def _absorb(self, arrays: ArrayRecord) -> None:
        """Make the combined arrays the global model (for a release: set the head from them)."""
        values = {name: array.numpy() for name, array in arrays.items()}
        if self.strategy.combine is Combine.PROTOTYPES:  # a release, or the release again
            prototypes.set_head(self.model, values, self.prior)
            if self.refining:  # the head of both releases, for the input training set up
                self._standardise_head(*self.centre_and_scale)
            elif self.job.train.warm_start is not None:
                self._warm_start(values)
            return
        self.arrays = arrays
        load_trainable_state(self.model, values)

    def _warm_start(self, statistics: dict[str, np.ndarray]) -> None:
        """Train on from the release: standardised features, the class-mean head as the start.

        The centre is the release's noisy feature mean and the scale a public statistic of the
        encoder (:mod:`residency.common.feature_scale`); both are post-processing of what was
        released, so the nodes' training rounds read them at no privacy cost.
        """
        bound = FEATURE_CENTRE_BOUND  # a mean of unit vectors; only the noise reaches past it
        centre = prototypes.feature_mean(statistics).clamp(-bound, bound)
        scale = public_feature_scale(
            self.model, self.tokenizer, max_length=self.job.model.max_length, compute=self.compute
        ).clamp_min(FEATURE_SCALE_FLOOR)
        set_feature_transform(self.model, centre.float(), scale.float())
        self.centre_and_scale = (centre, scale)
        self._standardise_head(centre, scale)
        state = trainable_state(self.model)
        self.arrays = ArrayRecord({name: Array(t.numpy()) for name, t in state.items()})
        self.config = ConfigRecord(
            round_config(
                self.job,
                base_fingerprint=self.fingerprint,
                feature_transform=feature_transform_bytes(centre.numpy(), scale.numpy()),
                signed=self.signed,
            )
        )
        self.strategy.combine = Combine.FEDAVG

    def _standardise_head(self, centre: torch.Tensor, scale: torch.Tensor) -> None:
        """The class-mean head rewritten for ``(x - centre) / scale``: the same logits."""
        head = classifier_head(self.model)
        weight, bias = prototypes.standardized(
            head.weight.detach(), head.bias.detach(), centre, scale
        )
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)

    def refine_round(self) -> None:
        """Make the next round the release again (its template out, the releases combined)."""
        self.strategy.combine = Combine.PROTOTYPES
        self.strategy.refining = True
        self.config = ConfigRecord({**dict(self.config), "refine": True})

    def _load_test(self) -> tuple[TensorDataset | None, TensorDataset | None]:
        """(held-out part, reported part) of the coordinator's test set, if it has one."""
        data = self.job.data
        if data.test is None:
            return None, None
        records = read_labeled_texts(
            data.test,
            text_column=data.text_column,
            label_column=data.label_column,
            labels=self.labels,
        )
        held = split_rows(records.texts, data.validation_share)

        def part(keep: bool) -> TensorDataset | None:
            rows = [i for i, flag in enumerate(held) if flag is keep]
            if not rows:
                return None
            return encode(
                [records.texts[i] for i in rows],
                [records.labels[i] for i in rows],
                self.tokenizer,
                max_length=self.job.model.max_length,
            )

        return part(True), part(False)

    def outgoing(self) -> ArrayRecord:
        """The global trainable arrays in the job's transfer precision (a refine: the template)."""
        if self.refining:
            return self._initial_arrays()
        state = {name: torch.from_numpy(array.numpy()) for name, array in self.arrays.items()}
        return ArrayRecord(
            {
                name: Array(value)
                for name, value in on_the_wire(state, self.job.train.transfer_dtype).items()
            }
        )

    def takes_part(self, node_id: int) -> bool:
        """Only the job's countries get its messages (all nodes when none are admitted)."""
        if not self.admitted:
            return True
        return self.admitted.get(node_id) in {node.country for node in self.job.nodes}

    def score(self) -> Scores | None:
        """The current global model on the reported part of the test set, if there is one."""
        if self.test is None:
            return None
        return evaluate(self.model, self.test, self.labels, compute=self.compute)

    def keep_if_better(self, server_round: int) -> float | None:
        """Score the round's model on the held-out part; keep its tensors if it is the best."""
        if self.held_out is None:
            return None
        accuracy = evaluate(self.model, self.held_out, self.labels, compute=self.compute).accuracy
        self.held_out_scores[server_round] = accuracy
        if self.refining or better(self.kept, accuracy):  # a refined release ends the job
            state = {name: t.detach().clone() for name, t in trainable_state(self.model).items()}
            self.kept = KeptModel(server_round, accuracy, state)
        return accuracy

    def restore_kept(self) -> int | None:
        """Make the kept model the global model; its round (None: nothing was held out)."""
        if self.kept is None:
            return None
        load_trainable_state(
            self.model, {name: t.float().numpy() for name, t in self.kept.state.items()}
        )
        return self.kept.round

    def _connected(self) -> tuple[set[int], set[str]]:
        """The job's nodes connected now, and the countries they speak for (where known)."""
        ids = set(self.grid.get_node_ids())
        if self.admitted:
            ids = {i for i in ids if self.takes_part(i)}
            return ids, {self.admitted[i] for i in ids}
        return ids, {self.countries.names[i] for i in ids if i in self.countries.names}

    def _absent(self, ids: set[int], names: set[str]) -> list[str]:
        """The job's countries not connected: by name, or counted where no reply named them."""
        if self.admitted:
            return sorted({node.country for node in self.job.nodes} - names)
        gone = sorted({c for i, c in self.countries.names.items() if i not in ids})
        unnamed = len(self.job.nodes) - len(ids) - len(gone)
        return gone + ([f"{unnamed} node(s) never heard from"] if unnamed > 0 else [])

    def round_nodes(self, server_round: int) -> tuple[list[int], list[str]]:
        """The round's nodes and the countries absent; every wait has a deadline.

        Round 1 waits up to ``nodes_timeout_s`` for every country, then starts if it has
        ``required_to_send``. Later rounds start at once with whoever is connected, once that
        is enough, so a node that comes back joins the next round and a dead one costs no wait.
        """
        wanted = len(self.job.nodes)
        required = self.job.train.required_to_send(wanted, server_round)
        timeout_s = self.job.train.nodes_timeout_s
        started = time.monotonic()
        deadline = started + timeout_s
        told = started - WAITING_EVERY_S  # say who is missing at once, then every so often
        while True:
            ids, names = self._connected()
            present = len(names) if self.admitted else len(ids)
            if present >= wanted or (server_round > 1 and present >= required):
                break
            if self.observer and time.monotonic() - told >= WAITING_EVERY_S:
                told = time.monotonic()
                absent = self._absent(ids, names)
                self.observer.waiting(server_round, absent, told - started, timeout_s)
            if time.monotonic() > deadline:
                if present >= required:
                    break
                missing = ", ".join(self._absent(ids, names))
                raise JobFailed(
                    f"round {server_round}: {present} of {wanted} countries connected after "
                    f"{timeout_s:g} s and the round needs {required} (missing: {missing}); "
                    "fix: start those nodes, or lower [train] min_nodes"
                )
            _pause(0.2, self.stop)
        return sorted(ids), self._absent(ids, names)

    def confirm_nodes(
        self, server_round: int, node_ids: list[int]
    ) -> tuple[list[int], dict[int, NodeRound], list[str]]:
        """Ask every node not yet asked to confirm the whole job before it is sent a round.

        A node confirms only if the job fits its dataset's budget to the end, and then holds
        that budget for it (:func:`residency.client.admission.confirm`); nothing is charged.
        Returns the confirmed nodes of ``node_ids``, the refusals (reported like a round's),
        and the countries that sent no confirmation in time or failed (left out, uncharged).
        """
        asking = [i for i in node_ids if i not in self.confirmed]
        refused: dict[int, NodeRound] = {}
        silent: list[str] = []
        if asking:
            timeout_s = self.job.train.round_timeout_s
            messages = self._queries(asking, ttl_s=timeout_s, **{"server-round": server_round})

            def on_reply(reply: Message, bytes_down: int) -> None:
                node_id = reply.metadata.src_node_id
                report = _node_round(reply, 0, self.countries, server_round=server_round)
                if report.status is NodeStatus.OK:
                    self.confirmed.add(node_id)
                elif report.status is NodeStatus.REFUSED:
                    refused[node_id] = report
                    if self.observer:
                        self.observer.node_finished(server_round, report)
                else:
                    log.warning("%s did not confirm job: %s", report.country, report.reason)
                    silent.append(report.country)

            replies = _exchange(
                self.grid, messages, timeout_s=timeout_s, on_reply=on_reply, stop=self.stop
            )
            if self.stop is not None and self.stop.is_set():
                raise KeyboardInterrupt
            answered = {reply.metadata.src_node_id for reply in replies}
            silent += [self.countries.of(i) for i in asking if i not in answered]
        return [i for i in node_ids if i in self.confirmed], refused, silent

    def _queries(self, node_ids: list[int], *, ttl_s: float, **plan: bool | int) -> list[Message]:
        """One query per node: the job's plan with ``plan``'s keys set, and no model."""
        config = ConfigRecord({**dict(self.config), **plan})
        content = RecordDict({wire.ARRAYS: ArrayRecord(), wire.CONFIG: config})
        return [
            Message(content, message_type=MessageType.QUERY, dst_node_id=i, ttl=ttl_s)
            for i in node_ids
        ]

    def end_holds(self) -> None:
        """Tell every node that confirmed the job it is over, so it frees what it still holds.

        Best effort, after the run's outcome is written: a node that does not hear it keeps
        the hold until its own ``reservation_hours`` lapse, which costs availability only.
        """
        if not self.confirmed:
            return
        ended = {"job-ended": True, "server-round": self.current_round}
        messages = self._queries(sorted(self.confirmed), ttl_s=END_HOLDS_S, **ended)
        try:
            _exchange(self.grid, messages, timeout_s=END_HOLDS_S, on_reply=lambda *_: None)
        except Exception as exc:  # the run is over whatever happens here
            log.warning("could not tell the nodes that the job ended: %s", exc)

    def _require_confirmed(
        self,
        server_round: int,
        confirmed: list[int],
        refused: Mapping[int, NodeRound],
        missing: list[str],
    ) -> None:
        """End the job before a round goes out that fewer nodes confirmed than it needs."""
        wanted = len(self.job.nodes)
        required = self.job.train.required_to_send(wanted, server_round)
        if len(confirmed) >= required:
            return
        if self.ledger is not None:
            for report in refused.values():
                self.ledger.refusal(report.country, server_round, report.reason or "")
        reasons = [r.reason or f"{r.country} refused" for r in refused.values()]
        reasons += [f"{country}: no confirmation" for country in missing]
        charged = "nothing was charged" if server_round == 1 else "round not sent"
        raise JobFailed(
            f"round {server_round}: {len(confirmed)} of {wanted} countries confirmed the whole "
            f"job and the round needs {required} ({'; '.join(reasons) or 'no replies'}); "
            f"{charged}"
        )

    def _require_quorum(
        self, server_round: int, reports: Mapping[int, NodeRound], absent: list[str]
    ) -> None:
        """End the job (exit 3) when fewer valid updates came than the round needs."""
        wanted = len(self.job.nodes)
        required = self.job.train.required_nodes(wanted, server_round)
        valid = len(self.strategy.accepted)
        if valid >= required:
            return
        missing = [f"{r.country}: {r.reason}" for r in reports.values() if r.reason]
        missing += [f"{country}: not connected" for country in absent]
        raise JobFailed(
            f"round {server_round}: valid updates from {valid} of {wanted} countries and the "
            f"round needs {required} ({'; '.join(missing) or 'no replies'})"
        )

    def play_round(self, server_round: int) -> RoundResult:
        """Send the global model, collect replies, aggregate the valid ones, score."""
        started = time.perf_counter()
        strategy = self.strategy
        self.current_round = server_round
        node_ids, absent = self.round_nodes(server_round)
        node_ids, refused, silent = self.confirm_nodes(server_round, node_ids)
        self._require_confirmed(server_round, node_ids, refused, [*absent, *silent])
        absent = [*absent, *silent]
        messages = strategy.train_messages(
            server_round,
            self.outgoing(),
            self.config,
            node_ids,
            ttl_s=self.job.train.round_timeout_s,
        )
        if self.sending is not None:
            self.sending(server_round, [self.countries.of(i) for i in node_ids])
        if self.observer:
            self.observer.round_started(
                server_round,
                len(messages),
                self.job.train.round_update(server_round, refine=self.refining),
            )
        reports: dict[int, NodeRound] = dict(refused)  # declined before the round, uncharged
        excluded: set[int] = set()
        received: dict[int, Received] = {}

        def on_reply(reply: Message, bytes_down: int) -> None:
            node_id = reply.metadata.src_node_id
            report = _node_round(reply, bytes_down, self.countries, server_round=server_round)
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
            if report.status is NodeStatus.REJECTED:
                excluded.add(node_id)
            reports[node_id] = report
            if self.observer:
                self.observer.node_finished(server_round, report)

        timeout_s = self.job.train.round_timeout_s
        sent_at = time.monotonic()
        replies = _exchange(
            self.grid, messages, timeout_s=timeout_s, on_reply=on_reply, stop=self.stop
        )
        if self.stop is not None and self.stop.is_set():
            raise KeyboardInterrupt  # replies cut short by the stop, not by the nodes
        waited = time.monotonic() - sent_at
        dropped = set(absent)
        for message in messages:
            node_id = message.metadata.dst_node_id
            if node_id not in reports:
                country = self.countries.of(node_id)
                reports[node_id] = NodeRound(
                    country=country,
                    status=NodeStatus.FAILED,
                    reason=timeout_sentence(country, server_round, waited),
                )
                dropped.add(country)
                if self.observer:  # said as the round closes, not after the next one
                    self.observer.node_finished(server_round, reports[node_id])
        new_arrays, _ = strategy.aggregate_train(
            server_round, [r for r in replies if r.metadata.src_node_id not in excluded]
        )
        rejected = {r.node_id: r.reason for r in strategy.rejected if not r.refused}
        self._to_ledger(server_round, received, rejected, reports)
        for node_id, report in reports.items():
            if report.status is NodeStatus.OK and node_id in rejected:
                report.status, report.reason = NodeStatus.REJECTED, rejected[node_id]
        self._tally(received, reports)
        self._require_quorum(server_round, reports, absent)
        assert new_arrays is not None  # the quorum is at least one valid update
        self._absorb(new_arrays)
        result = RoundResult(
            round=server_round,
            **_scores_fields(self.score()),
            held_out_accuracy=self.keep_if_better(server_round),
            refine=self.refining,
            nodes=sorted(reports.values(), key=lambda r: r.country),
            bytes_up=sum(r.bytes_up for r in reports.values()),
            bytes_down=sum(r.bytes_down for r in reports.values()),
            seconds=time.perf_counter() - started,
            dropped=sorted(dropped),
        )
        result.update = self.job.train.round_update(server_round, refine=self.refining).value
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
            elif report.status is not NodeStatus.REFUSED:
                self.spend.unconfirmed(report.country)

    def _to_ledger(
        self,
        server_round: int,
        received: Mapping[int, Received],
        rejected: Mapping[int, str],
        reports: Mapping[int, NodeRound],
    ) -> None:
        """Every signed record (averaged or not), refusal and unconfirmed round of the round."""
        if self.ledger is None:
            return
        averaged = {reply.metadata.src_node_id for reply in self.strategy.accepted}
        for node_id, got in sorted(received.items()):
            self.ledger.record(got, averaged=node_id in averaged, reason=rejected.get(node_id))
        for node_id, report in sorted(reports.items()):
            if report.status is NodeStatus.REFUSED:
                self.ledger.refusal(report.country, server_round, report.reason or "")
            elif node_id not in received:
                reason = report.reason or "no valid signed record"
                self.ledger.unconfirmed(report.country, server_round, reason)

    def checkpoint(self, out_dir: Path, server_round: int) -> None:
        """Keep the global model and the ledger position of a completed round."""
        transform = self.config.get("feature-transform", b"")
        kept = self.kept
        save_checkpoint(
            out_dir,
            server_round,
            {name: t.float().numpy() for name, t in trainable_state(self.model).items()},
            feature_transform=transform if isinstance(transform, bytes) else b"",
            ledger_position=None if self.ledger is None else self.ledger.ledger.head(),
            kept=None
            if kept is None
            else (
                kept.round,
                kept.accuracy,
                {name: t.float().numpy() for name, t in kept.state.items()},
            ),
        )

    def restore(self, saved: Saved, rounds: Iterable[RoundResult], next_round: int) -> None:
        """Continue from a checkpoint: its global model, a warm start's transform, the kept model.

        The model and strategy are set as they were after the checkpoint's round, so the next
        round goes out exactly as it would have before the crash.
        """
        if saved.transform is not None:  # the warm start's release ran: its standardisation
            centre, scale = (torch.from_numpy(np.array(row)) for row in saved.transform)
            set_feature_transform(self.model, centre, scale)
            self.centre_and_scale = (centre, scale)
            self.config = ConfigRecord(
                round_config(
                    self.job,
                    base_fingerprint=self.fingerprint,
                    feature_transform=feature_transform_bytes(*saved.transform),
                    signed=self.signed,
                )
            )
        load_trainable_state(self.model, saved.arrays)
        self.arrays = ArrayRecord({name: Array(value) for name, value in saved.arrays.items()})
        self.strategy.combine = method_for(self.job.train.round_update(next_round)).combine
        self.held_out_scores = {
            r.round: r.held_out_accuracy for r in rounds if r.held_out_accuracy is not None
        }
        checkpoint = saved.checkpoint
        if saved.kept is not None and checkpoint.kept_round is not None:
            state = {name: torch.from_numpy(np.array(a)) for name, a in saved.kept.items()}
            self.kept = KeptModel(checkpoint.kept_round, checkpoint.kept_accuracy or 0.0, state)

    def finish(self, out_dir: Path) -> FinalResult:
        """Score the kept model (else the last) and export it as a Hugging Face checkpoint."""
        kept = self.restore_kept()
        scores = self.score()
        model_dir = export_hf(self.model, self.tokenizer, self.labels, out_dir / MODEL_DIR)
        return FinalResult(
            accuracy=scores.accuracy if scores else None,
            macro_f1=scores.macro_f1 if scores else None,
            per_class={
                label: ClassResult(**vars(value))
                for label, value in (scores.per_class if scores else {}).items()
            },
            model_dir=str(model_dir),
            round=kept,
        )


def run_federation(
    grid: Grid,
    job: Job,
    *,
    nodes: int,
    out_dir: Path,
    observer: FederationObserver | None = None,
    admitted: Mapping[int, str] | None = None,
    run: str = "0",
    ledger: RunLedger | None = None,
    signed: SignedJob | None = None,
    control: RunControl | None = None,
    resumed: Results | None = None,
    tracker: Tracker | None = None,
) -> Results:
    """Run every round of ``job`` over ``nodes`` nodes; write results and the final model.

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
    """
    federation = _Federation(grid, job, nodes, observer, dict(admitted or {}), run, ledger, signed)
    results_path = out_dir / RESULTS_FILE

    def sending(server_round: int, countries: list[str]) -> None:
        results.in_flight = InFlight(
            round=server_round, countries=sorted(countries), refine=federation.refining
        )
        results.write(results_path)

    federation.sending = sending
    federation.stop = None if control is None else control.stop
    first_round, continues = 1, None
    if resumed is not None and resumed.resumed:
        results, continues = resumed, resumed.resumed[-1]
        results.status, first_round = RunStatus.RUNNING, continues.next_round
        federation.restore(load_checkpoint(out_dir), results.rounds, first_round)
        federation.spend = SpendTally(job, carried=results.privacy)
    else:
        results = Results(
            job=job.name,
            residency_version=__version__,
            started_at=now(),
            config=job.model_dump(mode="json"),
            baseline=RoundResult(
                round=0,
                **_scores_fields(federation.score()),
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
        _check_admitted(job, federation.countries)
        for server_round in range(first_round, job.train.server_rounds + 1):
            if federation.refine_next(server_round):
                federation.refine_round()
            result = federation.play_round(server_round)
            results.rounds.append(result)
            results.in_flight = None
            results.privacy = federation.spend.summary()
            federation.checkpoint(out_dir, server_round)  # before the next round is sent
            results.write(results_path)
            if tracker is not None:
                tracker.round(results, result)
            if observer:
                observer.round_finished(result)
            if result.refine:
                break  # the refined release spent the job's budget
        results.final = federation.finish(out_dir)
        results.status = RunStatus.COMPLETED
    except (SystemExit, KeyboardInterrupt):
        results.status, results.error = RunStatus.STOPPED, "stopped by a signal (runs stop, Ctrl-C)"
        if ledger is not None and results.in_flight is not None:  # they may have charged it
            for country in results.in_flight.countries:
                ledger.unconfirmed(country, results.in_flight.round, STOPPED_MID_ROUND)
        raise
    except BaseException as exc:
        results.status, results.error = RunStatus.FAILED, str(exc) or type(exc).__name__
        if isinstance(exc, JobFailed):  # raised before a round's messages left, or after it closed
            results.in_flight = None
        raise
    finally:
        results.privacy = federation.spend.summary()  # a failed round's charges count too
        results.finished_at = now()
        results.write(results_path)
        if ledger is not None:
            ledger.finished(results.status.value, results.error)
        if tracker is not None:
            tracker.finished(results, out_dir)
        if results.status is not RunStatus.STOPPED:  # a stopped run's grid is going away
            federation.end_holds()
        if control is not None:
            control.ended.set()
    return results
