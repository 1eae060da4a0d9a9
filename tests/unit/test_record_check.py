"""The coordinator averages a reply only if its signed record matches it exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from safetensors.numpy import load_file

from ledger_factory import write_ledger
from residency.common import wire
from residency.common.errors import InvalidUpdate
from residency.common.privacy.record import PrivacyRecord
from residency.server.record_check import received_record

pytestmark = pytest.mark.unit


def _reply(tmp_path: Path, examples: int = 400) -> tuple[RecordDict, PrivacyRecord]:
    """DE's round-1 reply as its node sent it: arrays, metrics and the signed record."""
    made = write_ledger(tmp_path, countries=("DE",), rounds=1, refuse=None, examples=examples)
    entry = json.loads(made.node_ledgers["DE"].read_text("ascii").splitlines()[-1])
    record = PrivacyRecord.model_validate_json(entry["record"]["body"])
    digest = record.update_sha256
    arrays = load_file(str(made.ledger.parent / "updates" / f"{digest}.safetensors"))
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            wire.METRICS: MetricRecord(
                {
                    wire.EPSILON: record.epsilon,
                    wire.NOISE_MULTIPLIER: record.noise_multiplier,
                    wire.NUM_EXAMPLES: record.examples,
                }
            ),
            wire.RECORD: ConfigRecord(
                {
                    wire.RECORD_BODY: entry["record"]["body"],
                    wire.RECORD_SIGNATURE: entry["record"]["signature"],
                }
            ),
        }
    )
    return content, record


def test_a_matching_record_is_accepted(tmp_path: Path) -> None:
    content, record = _reply(tmp_path)

    got = received_record(content, job="triage", run="7", server_round=1, country="DE")

    assert got.record == record
    assert got.received_sha256 == record.update_sha256


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"job": "other"}, "names job 'triage'"),
        ({"run": "8"}, "names run '7'"),
        ({"server_round": 2}, "names round 1"),
        ({"country": "FR"}, "names country 'DE'"),
    ],
)
def test_a_record_for_another_job_run_round_or_country_is_rejected(
    tmp_path: Path, where: dict[str, object], expected: str
) -> None:
    content, _ = _reply(tmp_path)
    args: dict[str, object] = {"job": "triage", "run": "7", "server_round": 1, "country": "DE"}
    args.update(where)

    with pytest.raises(InvalidUpdate, match=expected):
        received_record(content, **args)  # type: ignore[arg-type]


def test_arrays_other_than_the_signed_ones_are_rejected(tmp_path: Path) -> None:
    content, _ = _reply(tmp_path)
    arrays = content.array_records[wire.ARRAYS]
    name = next(iter(arrays))
    arrays[name] = Array(arrays[name].numpy() + np.float32(1e-6))

    with pytest.raises(InvalidUpdate, match="update differs from the hash"):
        received_record(content, job="triage", run="7", server_round=1, country="DE")


@pytest.mark.parametrize(
    ("metric", "field", "expected"),
    [
        (wire.EPSILON, "epsilon", "epsilon differs"),
        # a smaller noise would buy a larger weight in the release's sum
        (wire.NOISE_MULTIPLIER, "noise_multiplier", "noise multiplier differs"),
    ],
)
def test_metrics_that_contradict_the_record_are_rejected(
    tmp_path: Path, metric: str, field: str, expected: str
) -> None:
    content, record = _reply(tmp_path)
    content.metric_records[wire.METRICS][metric] = getattr(record, field) / 2

    with pytest.raises(InvalidUpdate, match=expected):
        received_record(content, job="triage", run="7", server_round=1, country="DE")


def test_a_reply_without_a_record_is_rejected(tmp_path: Path) -> None:
    content, _ = _reply(tmp_path)
    del content.config_records[wire.RECORD]

    with pytest.raises(InvalidUpdate, match="no signed privacy record"):
        received_record(content, job="triage", run="7", server_round=1, country="DE")


@pytest.mark.parametrize(
    ("claimed", "expected"),
    [
        pytest.param(
            10**9, "num-examples 1000000000 differs from the 50 examples in the signed", id="1e9"
        ),
        pytest.param(1e9, "num-examples is not an integer", id="1e9-float"),
        pytest.param(49, "num-examples 49 differs from the 50 examples", id="fewer"),
        pytest.param(None, "reply has no num-examples metric", id="missing"),
    ],
)
def test_the_average_weight_must_be_the_signed_example_count(
    tmp_path: Path, claimed: int | float | None, expected: str
) -> None:
    """FedAvg weights by the unsigned metric: a node must not claim more than it signed."""
    content, record = _reply(tmp_path, examples=50)
    assert record.examples == 50
    metrics = content.metric_records[wire.METRICS]
    if claimed is None:
        del metrics[wire.NUM_EXAMPLES]
    else:
        metrics[wire.NUM_EXAMPLES] = claimed

    with pytest.raises(InvalidUpdate, match=expected):
        received_record(content, job="triage", run="7", server_round=1, country="DE")
