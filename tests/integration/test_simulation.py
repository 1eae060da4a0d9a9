"""A real federation on Flower's simulation engine: three countries, DP-SGD on every node."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message
from flwr.serverapp import Grid
from opacus.accountants import PRVAccountant
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from residency.auditor.verify import load_keys, verify_ledger
from residency.cli.simulation import simulate
from residency.common.config.job import load_job
from residency.common.data.readers import read_labeled_texts
from residency.common.privacy.public_size import rounded_size
from residency.common.privacy.record import SCHEMA_DROPPED, PrivacyRecord
from residency.server.held_out import split_rows
from residency.server.results import Results
from toy_federation import LABELS, LEARNABLE, write_toy_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNTRIES = ("DE", "FR", "ES")


@dataclass
class RecordingGrid(Grid):
    """Delegates to Flower's grid and keeps every message the coordinator receives."""

    inner: Grid
    received: list[Message] = field(default_factory=list)

    def set_run(self, run):  # type: ignore[no-untyped-def]
        self.inner.set_run(run)

    @property
    def run(self):  # type: ignore[no-untyped-def]
        return self.inner.run

    def create_message(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        self.received.extend(replies)
        return replies

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        raise AssertionError("Residency's loop pulls replies itself")


@dataclass
class Run:
    job_path: Path
    out: Path
    results: Results
    received: list[Message]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("federation")
    job_path = write_toy_job(
        folder / "job", countries=COUNTRIES, rounds=3, canaries=True, examples=LEARNABLE
    )
    grids: list[RecordingGrid] = []

    def wrap(grid: Grid) -> Grid:
        grids.append(RecordingGrid(grid))
        return grids[-1]

    out = folder / "out"
    results = simulate(load_job(job_path), job_path, out_dir=out, wrap_grid=wrap)
    return Run(job_path, out, results, grids[0].received)


def test_federated_dp_training_beats_chance(run: Run) -> None:
    final = run.results.final
    assert final is not None
    assert final.accuracy is not None
    assert run.results.baseline is not None
    assert run.results.baseline.accuracy is not None
    assert final.accuracy > 0.6, f"3 balanced classes, chance is 0.33; got {final.accuracy}"
    assert final.accuracy > run.results.baseline.accuracy + 0.2


def test_every_country_trained_every_round(run: Run) -> None:
    assert [r.round for r in run.results.rounds] == [1, 2, 3]
    for result in run.results.rounds:
        assert sorted(n.country for n in result.nodes) == sorted(COUNTRIES)
        assert all(n.status == "ok" for n in result.nodes)
        # The size each virtual node declared public: its count to 2 significant figures.
        assert all(n.examples == rounded_size(LEARNABLE) for n in result.nodes)
        assert all(n.bytes_up > 0 for n in result.nodes)
        assert all(n.bytes_down > 0 for n in result.nodes)


def test_results_file_has_documented_schema(run: Run) -> None:
    data = json.loads((run.out / "results.json").read_text())
    assert data["status"] == "completed"
    assert data["schema_version"] == 6
    for entry in data["rounds"]:
        assert {
            "accuracy",
            "macro_f1",
            "held_out_accuracy",
            "bytes_up",
            "bytes_down",
        } <= entry.keys()
        assert "train_loss" not in entry  # never noised, so never sent (docs/privacy.md)
        for node in entry["nodes"]:
            assert {"country", "examples", "epsilon"} <= node.keys()
            assert not {"train_loss", "train_seconds"} & node.keys()
    assert 0 <= data["final"]["accuracy"] <= 1
    assert 0 <= data["final"]["macro_f1"] <= 1
    assert data["final"]["round"] in {1, 2, 3}  # the best on the held-out half
    assert set(data["final"]["per_class"]) == set(LABELS)
    assert {"precision", "recall", "f1"} <= data["final"]["per_class"]["pos"].keys()
    for country in COUNTRIES:
        privacy = data["privacy"][country]
        assert privacy["delta"] == 1e-4
        assert 0 < privacy["epsilon"] <= 8.0
        assert (privacy["rounds_averaged"], privacy["rounds_charged"]) == (3, 3)
        assert privacy["rounds_unconfirmed"] == 0
        assert len(privacy["dataset_account"]) == 64


def test_reported_epsilon_is_opacus_composed_over_rounds(run: Run) -> None:
    """Cumulative epsilon equals a fresh Opacus accountant over every step of every round."""
    for country in COUNTRIES:
        summary = run.results.privacy[country]
        per_round = [next(n for n in r.nodes if n.country == country) for r in run.results.rounds]
        assert summary.steps == sum(n.steps or 0 for n in per_round)
        accountant = PRVAccountant()
        accountant.history = [(summary.noise_multiplier, summary.sample_rate, summary.steps)]
        assert summary.epsilon == pytest.approx(
            accountant.get_epsilon(delta=summary.delta), rel=1e-9
        )
        # Composed, not reset: round 2's cumulative epsilon exceeds round 1's.
        assert per_round[1].epsilon > per_round[0].epsilon  # type: ignore[operator]
        one_round = PRVAccountant()
        one_round.history = [(summary.noise_multiplier, summary.sample_rate, per_round[0].steps)]
        assert per_round[0].epsilon == pytest.approx(one_round.get_epsilon(delta=summary.delta))
        assert summary.epsilon <= 8.0 + 1e-9


def _wire_bytes(message: Message) -> Iterator[bytes]:
    """Every byte Flower serialises for a message: the object and all its children."""
    pending = [message]
    while pending:
        obj = pending.pop()
        yield obj.deflate()
        pending.extend(obj.children.values() if obj.children else ())


def test_no_canary_reaches_the_coordinator(run: Run) -> None:
    canaries = [f"zqxcanary{c}{i}wvk" for i, c in enumerate(COUNTRIES)]
    data_text = "".join((run.job_path.parent / f"{c.lower()}.csv").read_text() for c in COUNTRIES)
    assert all(canary in data_text for canary in canaries)  # planted where nodes train
    # Each country confirms the whole job (a query), trains its three rounds, and hears the
    # job's end (a query that frees what it held).
    kinds = sorted(msg.metadata.message_type for msg in run.received)
    assert kinds == ["query"] * len(COUNTRIES) * 2 + ["train"] * len(COUNTRIES) * 3
    blob = b"".join(chunk for msg in run.received for chunk in _wire_bytes(msg))
    assert len(blob) > 10_000  # the updates themselves were inspected
    for canary in canaries:
        assert canary.encode() not in blob
        assert canary.lower().encode() not in blob


def test_saved_model_reloads_with_transformers_and_predicts(run: Run) -> None:
    model_dir = run.out / "model"
    assert (model_dir / "model.safetensors").exists()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert [model.config.id2label[i] for i in range(len(LABELS))] == list(LABELS)
    test = read_labeled_texts(
        run.job_path.parent / "test.csv", text_column="text", label_column="label", labels=LABELS
    )
    # The reported part: the held-out rows only choose the kept round (server/held_out.py).
    share = load_job(run.job_path).data.validation_share
    reported = [i for i, held in enumerate(split_rows(list(test.texts), share)) if not held]
    with torch.no_grad():
        batch = tokenizer(
            [test.texts[i] for i in reported],
            padding=True,
            truncation=True,
            max_length=16,
            return_tensors="pt",
        )
        predicted = model(**batch).logits.argmax(-1).numpy()
    accuracy = float(np.mean(predicted == np.array([test.labels[i] for i in reported])))
    assert run.results.final is not None
    assert accuracy == pytest.approx(run.results.final.accuracy, abs=1e-6)


def test_the_runs_ledger_verifies_and_holds_every_signed_round(run: Run) -> None:
    """`residency audit verify` on what a simulation wrote: every round signed and averaged."""
    ledger = run.out / "ledger" / "ledger.jsonl"
    node_copies = [run.out / "nodes" / f"{c}-state" / "ledger.jsonl" for c in COUNTRIES]

    result = verify_ledger(ledger, load_keys(run.out / "keys"), node_ledgers=node_copies)

    assert result.ok, [str(p) for p in result.problems]
    assert result.notes == []
    assert sorted((s.country, s.round) for s in result.spends) == sorted(
        (c, r) for c in COUNTRIES for r in (1, 2, 3)
    )
    assert all(s.averaged for s in result.spends)
    for spend in result.spends:
        reported = next(
            n for n in run.results.rounds[spend.round - 1].nodes if n.country == spend.country
        )
        assert spend.record.epsilon == reported.epsilon
        assert spend.record.epsilon_dataset is None  # the lifetime stays in the node's ledger
        assert spend.epsilon_dataset == pytest.approx(spend.record.epsilon)  # fresh node
        assert spend.record.budget_epsilon == 8.0
    assert len(list((run.out / "ledger" / "updates").glob("*.safetensors"))) == 9


def test_privacy_records_are_the_only_text_besides_identifiers(run: Run) -> None:
    """Each reply carries exactly one signed record, and it names no training text."""
    replies = [m for m in run.received if m.metadata.message_type == "train"]
    assert len(replies) == 9
    confirmations = [m for m in run.received if m.metadata.message_type == "query"]
    assert [set(m.content) for m in confirmations] == [{"node"}] * len(COUNTRIES) * 2
    for reply in replies:
        record = reply.content.config_records["privacy-record"]
        assert set(record) == {"body", "signature"}
        body = json.loads(str(record["body"]))
        assert body["country"] in COUNTRIES
        dropped = SCHEMA_DROPPED[5]  # the lifetime ε stays in the node's own ledger
        assert set(body) == set(PrivacyRecord.model_fields) - dropped
