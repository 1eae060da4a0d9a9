"""The coordinator's round loop on top of a Flower ``Grid`` and strategy.

Flower's ``Strategy.start`` waits for all replies at once; this loop uses the same strategy
(``configure_train`` / ``aggregate_train``) but pulls replies as they arrive, so progress is
shown per node and results are written after every round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch.utils.data import TensorDataset

from residency.common.version import __version__
from residency.common import wire
from residency.common.config.job import Job
from residency.common.config.round_plan import round_config
from residency.common.data.encoding import encode
from residency.common.data.readers import read_labeled_texts
from residency.common.device import pick_compute
from residency.common.evaluation import Scores, evaluate
from residency.common.model import (
    ModelSpec,
    base_fingerprint,
    build_classifier,
    export_hf,
    load_tokenizer,
    load_trainable_state,
    trainable_state,
)
from residency.server.results import (
    ClassResult,
    CountryPrivacy,
    FinalResult,
    NodeRound,
    NodeStatus,
    Results,
    RoundResult,
    RunStatus,
    now,
)
from residency.server.strategy import ValidatingFedAvg

log = logging.getLogger("residency.coordinator")

RESULTS_FILE = "results.json"
MODEL_DIR = "model"


class JobFailed(RuntimeError):
    """The federation cannot continue (no valid update in a round, or nodes never came)."""


class FederationObserver(Protocol):
    """Receives progress as it happens (the CLI renders it; tests record it)."""

    def round_started(self, server_round: int, nodes: int) -> None:
        """A round's training messages went out to ``nodes`` nodes."""

    def node_finished(self, server_round: int, report: NodeRound) -> None:
        """One node's reply arrived (or it failed)."""

    def round_finished(self, result: RoundResult) -> None:
        """The round was aggregated and the global model scored."""


@dataclass
class _Countries:
    """Node id to country, learned from replies (error replies carry no content)."""

    names: dict[int, str]

    def of(self, node_id: int) -> str:
        return self.names.get(node_id, f"node-{node_id}")


def _record_bytes(content: RecordDict) -> int:
    return sum(
        record.count_bytes()
        for records in (content.array_records, content.metric_records, content.config_records)
        for record in records.values()
    )


def _node_round(reply: Message, bytes_down: int, countries: _Countries) -> NodeRound:
    node_id = reply.metadata.src_node_id
    if reply.has_error():
        code = reply.error.code
        return NodeRound(
            country=countries.of(node_id),
            status=NodeStatus.REFUSED if code == wire.REFUSED else NodeStatus.FAILED,
            bytes_down=bytes_down,
            reason=reply.error.reason,
        )
    content = reply.content
    node = content.config_records.get(wire.NODE, ConfigRecord())
    country = str(node.get(wire.COUNTRY, countries.of(node_id)))
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
        train_loss=metric(wire.TRAIN_LOSS),
        epsilon=metric(wire.EPSILON),
        epsilon_round=metric(wire.EPSILON_ROUND),
        noise_multiplier=metric(wire.NOISE_MULTIPLIER),
        sample_rate=metric(wire.SAMPLE_RATE),
        steps=None if steps is None else int(steps),
        train_seconds=metric(wire.TRAIN_SECONDS),
        bytes_up=_record_bytes(content),
        bytes_down=bytes_down,
    )


def _wait_for_nodes(grid: Grid, nodes: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(grid.get_node_ids())) < nodes:
        if time.monotonic() > deadline:
            connected = len(list(grid.get_node_ids()))
            raise JobFailed(f"only {connected} of {nodes} nodes connected within {timeout_s:g} s")
        time.sleep(0.2)


def _exchange(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout_s: float,
    on_reply: Callable[[Message, int], None],
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
            time.sleep(0.1)
    if pending:
        log.warning("%d node(s) did not reply within %g s", len(pending), timeout_s)
    return replies


def _scores_fields(scores: Scores | None) -> dict[str, float | None]:
    if scores is None:
        return {"accuracy": None, "macro_f1": None, "test_loss": None}
    return {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1, "test_loss": scores.loss}


def run_federation(
    grid: Grid,
    job: Job,
    *,
    nodes: int,
    out_dir: Path,
    observer: FederationObserver | None = None,
) -> Results:
    """Run every round of ``job`` over ``nodes`` nodes; write results and the final model."""
    compute = pick_compute()
    spec = ModelSpec.from_job(job)
    model = build_classifier(spec)
    tokenizer = load_tokenizer(spec.source)
    arrays = ArrayRecord(trainable_state(model))
    config = ConfigRecord(round_config(job, base_fingerprint=base_fingerprint(model)))
    labels = tuple(job.data.labels)
    test: TensorDataset | None = None
    if job.data.test is not None:
        records = read_labeled_texts(
            job.data.test,
            text_column=job.data.text_column,
            label_column=job.data.label_column,
            labels=labels,
        )
        test = encode(records.texts, records.labels, tokenizer, max_length=job.model.max_length)

    def score() -> Scores | None:
        return None if test is None else evaluate(model, test, labels, compute=compute)

    results_path = out_dir / RESULTS_FILE
    results = Results(
        job=job.name,
        residency_version=__version__,
        started_at=now(),
        config=job.model_dump(mode="json"),
    )
    baseline = score()
    results.baseline = RoundResult(
        round=0, **_scores_fields(baseline), train_loss=None, nodes=[], bytes_up=0,
        bytes_down=0, seconds=0.0,
    )
    results.write(results_path)
    strategy = ValidatingFedAvg(nodes=nodes)
    countries = _Countries({})
    privacy: dict[str, CountryPrivacy] = {}
    try:
        _wait_for_nodes(grid, nodes, job.train.nodes_timeout_s)
        for server_round in range(1, job.train.rounds + 1):
            started = time.perf_counter()
            messages = list(strategy.configure_train(server_round, arrays, config, grid))
            if observer:
                observer.round_started(server_round, len(messages))
            reports: list[NodeRound] = []

            def on_reply(reply: Message, bytes_down: int, rnd: int = server_round) -> None:
                report = _node_round(reply, bytes_down, countries)
                reports.append(report)
                if observer:
                    observer.node_finished(rnd, report)

            replies = _exchange(
                grid, messages, timeout_s=job.train.round_timeout_s, on_reply=on_reply
            )
            new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
            for rejection in strategy.rejected:
                for report in reports:
                    if report.status is NodeStatus.OK and countries.names.get(
                        rejection.node_id
                    ) == report.country:
                        report.status, report.reason = NodeStatus.REJECTED, rejection.reason
            if new_arrays is None:
                reasons = "; ".join(r.reason or r.status for r in reports) or "no replies"
                raise JobFailed(f"round {server_round}: no valid update ({reasons})")
            arrays = new_arrays
            load_trainable_state(model, {k: v.numpy() for k, v in arrays.items()})
            scores = score()
            for reply in strategy.accepted:
                _update_privacy(privacy, reply, job, countries)
            loss = train_metrics.get(wire.TRAIN_LOSS) if train_metrics else None
            result = RoundResult(
                round=server_round,
                **_scores_fields(scores),
                train_loss=float(loss) if isinstance(loss, int | float) else None,
                nodes=sorted(reports, key=lambda r: r.country),
                bytes_up=sum(r.bytes_up for r in reports),
                bytes_down=sum(r.bytes_down for r in reports),
                seconds=time.perf_counter() - started,
            )
            results.rounds.append(result)
            results.privacy = dict(sorted(privacy.items()))
            results.write(results_path)
            if observer:
                observer.round_finished(result)
        final_scores = score()
        model_dir = export_hf(model, tokenizer, labels, out_dir / MODEL_DIR)
        results.final = FinalResult(
            accuracy=final_scores.accuracy if final_scores else None,
            macro_f1=final_scores.macro_f1 if final_scores else None,
            per_class={
                label: ClassResult(**vars(value))
                for label, value in (final_scores.per_class if final_scores else {}).items()
            },
            model_dir=str(model_dir),
        )
        results.status = RunStatus.COMPLETED
    except BaseException as exc:
        results.status, results.error = RunStatus.FAILED, str(exc) or type(exc).__name__
        raise
    finally:
        results.finished_at = now()
        results.write(results_path)
    return results


def _update_privacy(
    privacy: dict[str, CountryPrivacy], reply: Message, job: Job, countries: _Countries
) -> None:
    metrics = reply.content.metric_records[wire.METRICS]
    node = reply.content.config_records.get(wire.NODE, ConfigRecord())
    country = countries.of(reply.metadata.src_node_id)
    previous = privacy.get(country)
    privacy[country] = CountryPrivacy(
        epsilon=float(metrics[wire.EPSILON]),  # type: ignore[arg-type]
        delta=float(metrics[wire.DELTA]),  # type: ignore[arg-type]
        target_epsilon=job.privacy.target_epsilon,
        accountant=str(node.get(wire.ACCOUNTANT, job.privacy.accountant.value)),
        noise_multiplier=float(metrics[wire.NOISE_MULTIPLIER]),  # type: ignore[arg-type]
        sample_rate=float(metrics[wire.SAMPLE_RATE]),  # type: ignore[arg-type]
        steps=(previous.steps if previous else 0) + int(metrics[wire.STEPS]),  # type: ignore[call-overload]
        rounds=(previous.rounds if previous else 0) + 1,
        dataset_fingerprint=str(node[wire.DATASET_FINGERPRINT])
        if wire.DATASET_FINGERPRINT in node
        else None,
    )
