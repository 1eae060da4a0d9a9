"""Egress guard: only allow-listed arrays, metrics and identifiers leave a node."""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from ledger_factory import write_ledger
from residency.client.egress import GENERIC_REASON, egress_guard, guard_reply
from residency.common import wire
from residency.common.privacy.record import PrivacyRecord, sign_record
from residency.common.refusal import Refusal, RefusalCode, describe

pytestmark = pytest.mark.unit

LOGGER = "residency.egress"
RNG = np.random.default_rng(0)
SENT = {
    "classifier.weight": RNG.standard_normal((2, 4)).astype(np.float32),
    "classifier.bias": np.zeros(2, dtype=np.float32),
    "lora_A.query": RNG.standard_normal((3, 4)).astype(np.float32),
}
METRICS: dict[str, int | float] = {
    wire.NUM_EXAMPLES: 120,
    wire.STEPS: 12,
    wire.EPSILON: 1.25,
    wire.EPSILON_ROUND: 0.4,
    wire.DELTA: 1e-5,
    wire.NOISE_MULTIPLIER: 1.1,
    wire.SAMPLE_RATE: 0.25,
    wire.MAX_GRAD_NORM: 1.0,
}
NODE = {
    wire.COUNTRY: "DE",
    wire.ACCOUNTANT: "prv",
    wire.DATASET_ACCOUNT: "0123456789abcdef" * 4,
    wire.VERSION: "0.1.0",
}
SECRET = "Jane Doe, 45, admitted with chest pain"


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages take run and node ids from the process' task identity."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 11)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def instruction(arrays: dict[str, np.ndarray] | None = None, node_id: int = 1) -> Message:
    """A train instruction as the coordinator sends it, with the id the SuperLink assigns."""
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord(
                {name: Array(value) for name, value in (arrays or SENT).items()}
            ),
            wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 1, "job": "toy"}),
        }
    )
    msg = Message(content, dst_node_id=node_id, message_type="train")
    # As flwr's SuperLink does (flwr/server/superlink/linkstate/utils.py).
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def updated_arrays() -> dict[str, Any]:
    return {name: Array(value + 0.5) for name, value in SENT.items()}


def reply(
    to: Message,
    *,
    arrays: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    node: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Message:
    """A training reply; each part defaults to a clean one."""
    records: dict[str, Any] = {
        wire.ARRAYS: ArrayRecord(updated_arrays() if arrays is None else arrays),
        wire.METRICS: MetricRecord(dict(METRICS) if metrics is None else metrics),
        wire.NODE: ConfigRecord(dict(NODE) if node is None else node),
    }
    records.update(extra or {})
    return Message(RecordDict(records), reply_to=to)


def as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING
    ]


def npy_bytes(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


def test_clean_reply_passes_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    sent = instruction()
    original = reply(sent)

    guarded = guard_reply(sent, original)

    assert not guarded.has_error()
    assert set(guarded.content.keys()) == {wire.ARRAYS, wire.METRICS, wire.NODE}
    arrays = as_numpy(guarded.content.array_records[wire.ARRAYS])
    assert arrays.keys() == SENT.keys()
    for name, value in SENT.items():
        np.testing.assert_array_equal(arrays[name], value + 0.5)
        assert arrays[name].dtype == value.dtype
    assert dict(guarded.content.metric_records[wire.METRICS]) == METRICS
    assert dict(guarded.content.config_records[wire.NODE]) == NODE
    assert warnings_logged(caplog) == []


def test_guarded_reply_still_answers_the_instruction() -> None:
    sent = instruction(node_id=7)

    guarded = guard_reply(sent, reply(sent))

    assert guarded.metadata.reply_to_message_id == sent.metadata.message_id
    assert guarded.metadata.src_node_id == 7
    assert guarded.metadata.dst_node_id == sent.metadata.src_node_id
    assert guarded.metadata.message_type == "train"
    assert guarded.metadata.run_id == sent.metadata.run_id


def test_partial_reply_is_not_padded() -> None:
    sent = instruction()
    original = Message(RecordDict({wire.METRICS: MetricRecord(dict(METRICS))}), reply_to=sent)

    guarded = guard_reply(sent, original)

    assert list(guarded.content.keys()) == [wire.METRICS]


# Each case: the reply's parts to override, and which (record, key) must be dropped.
ARRAY_VIOLATIONS = {
    "extra-array-name": (
        {**updated_arrays(), "bert.embeddings.word": Array(np.ones((5, 4), dtype=np.float32))},
        "bert.embeddings.word",
    ),
    "transposed-shape": (
        {**updated_arrays(), "classifier.weight": Array(np.ones((4, 2), dtype=np.float32))},
        "classifier.weight",
    ),
    "flattened-shape": (
        {**updated_arrays(), "classifier.weight": Array(np.ones(8, dtype=np.float32))},
        "classifier.weight",
    ),
    "int-dtype": (
        {**updated_arrays(), "classifier.bias": Array(np.array([3, 1], dtype=np.int64))},
        "classifier.bias",
    ),
    "wider-float": (
        {**updated_arrays(), "lora_A.query": Array(np.ones((3, 4), dtype=np.float64))},
        "lora_A.query",
    ),
    "token-ids": (
        {**updated_arrays(), "input_ids": Array(np.arange(16, dtype=np.int64).reshape(2, 8))},
        "input_ids",
    ),
}


@pytest.mark.parametrize("case", list(ARRAY_VIOLATIONS))
def test_bad_array_is_dropped_and_logged(case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    arrays, dropped = ARRAY_VIOLATIONS[case]
    sent = instruction()

    guarded = guard_reply(sent, reply(sent, arrays=arrays))

    kept = as_numpy(guarded.content.array_records[wire.ARRAYS])
    assert dropped not in kept
    assert kept.keys() == SENT.keys() - {dropped}
    for name in kept:
        np.testing.assert_array_equal(kept[name], SENT[name] + 0.5)
    assert dict(guarded.content.metric_records[wire.METRICS]) == METRICS
    logged = warnings_logged(caplog)
    assert len(logged) == 1
    assert repr(dropped) in logged[0]


def test_int_array_that_was_sent_is_still_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    ids = np.arange(8, dtype=np.int64).reshape(1, 8)
    sent = instruction({**SENT, "position_ids": ids})
    arrays = {**updated_arrays(), "position_ids": Array(ids + 100)}

    guarded = guard_reply(sent, reply(sent, arrays=arrays))

    assert "position_ids" not in guarded.content.array_records[wire.ARRAYS]
    assert any("'position_ids'" in line for line in warnings_logged(caplog))


def test_array_payload_must_match_its_declared_shape_and_dtype(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An Array's dtype/shape fields are metadata; the bytes may hold something else entirely."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    smuggled = Array(
        dtype="float32",
        shape=(2, 4),
        stype="numpy.ndarray",
        data=npy_bytes(np.array([SECRET])),
    )
    sent = instruction()
    arrays = {**updated_arrays(), "classifier.weight": smuggled}

    guarded = guard_reply(sent, reply(sent, arrays=arrays))

    kept = guarded.content.array_records[wire.ARRAYS]
    assert "classifier.weight" not in kept
    assert all(SECRET not in str(array.numpy()) for array in kept.values())
    assert any("'classifier.weight'" in line for line in warnings_logged(caplog))


def test_extra_record_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    sent = instruction()
    extra = {
        "debug": ConfigRecord({"text": SECRET, "label": "Cardiology"}),
        "samples": ArrayRecord({"input_ids": Array(np.arange(8, dtype=np.int64))}),
        "per-record": MetricRecord({"loss": [0.1, 0.2, 0.3]}),
    }

    guarded = guard_reply(sent, reply(sent, extra=extra))

    assert set(guarded.content.keys()) == {wire.ARRAYS, wire.METRICS, wire.NODE}
    assert as_numpy(guarded.content.array_records[wire.ARRAYS]).keys() == SENT.keys()
    assert dict(guarded.content.metric_records[wire.METRICS]) == METRICS
    assert dict(guarded.content.config_records[wire.NODE]) == NODE
    logged = " | ".join(warnings_logged(caplog))
    for name in extra:
        assert repr(name) in logged


def test_allowed_name_with_the_wrong_record_type_is_dropped() -> None:
    sent = instruction()
    original = Message(
        RecordDict(
            {
                wire.ARRAYS: ArrayRecord(updated_arrays()),
                wire.METRICS: ConfigRecord({"note": SECRET}),
                wire.NODE: MetricRecord({"country-code": 49}),
            }
        ),
        reply_to=sent,
    )

    guarded = guard_reply(sent, original)

    assert list(guarded.content.keys()) == [wire.ARRAYS]


METRIC_VIOLATIONS = {
    "unknown-key": ({**METRICS, "label-Cardiology-count": 12}, "label-Cardiology-count"),
    "accuracy": ({**METRICS, "train-accuracy": 0.9}, "train-accuracy"),
    "nan": ({**METRICS, wire.NOISE_MULTIPLIER: math.nan}, wire.NOISE_MULTIPLIER),
    "train-loss": ({**METRICS, "train-loss": 0.71}, "train-loss"),  # un-noised: never leaves
    "train-seconds": ({**METRICS, "train-seconds": 3.5}, "train-seconds"),
    "inf": ({**METRICS, wire.EPSILON: math.inf}, wire.EPSILON),
    "minus-inf": ({**METRICS, wire.EPSILON_ROUND: -math.inf}, wire.EPSILON_ROUND),
    "per-record-list": ({**METRICS, wire.STEPS: [0.5, 0.9, 0.1]}, wire.STEPS),
}


@pytest.mark.parametrize("case", list(METRIC_VIOLATIONS))
def test_bad_metric_is_dropped_and_logged(case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    metrics, dropped = METRIC_VIOLATIONS[case]
    sent = instruction()

    guarded = guard_reply(sent, reply(sent, metrics=metrics))

    kept = dict(guarded.content.metric_records[wire.METRICS])
    assert dropped not in kept
    assert kept == {k: v for k, v in METRICS.items() if k != dropped}
    assert as_numpy(guarded.content.array_records[wire.ARRAYS]).keys() == SENT.keys()
    logged = warnings_logged(caplog)
    assert len(logged) == 1
    assert repr(dropped) in logged[0]


NODE_VIOLATIONS = {
    "country-name": ({**NODE, wire.COUNTRY: "Germany"}, wire.COUNTRY),
    "country-lower": ({**NODE, wire.COUNTRY: "de"}, wire.COUNTRY),
    "country-snippet": ({**NODE, wire.COUNTRY: f"DE {SECRET}"}, wire.COUNTRY),
    "country-newline": ({**NODE, wire.COUNTRY: "DE\n"}, wire.COUNTRY),
    "accountant": ({**NODE, wire.ACCOUNTANT: "prv (see Jane Doe)"}, wire.ACCOUNTANT),
    "account": ({**NODE, wire.DATASET_ACCOUNT: SECRET}, wire.DATASET_ACCOUNT),
    "short-account": ({**NODE, wire.DATASET_ACCOUNT: "abc123"}, wire.DATASET_ACCOUNT),
    "content-fingerprint": ({**NODE, "dataset-fingerprint": "ab" * 32}, "dataset-fingerprint"),
    "version-text": ({**NODE, wire.VERSION: "0.1.0 built by Jane Doe"}, wire.VERSION),
    "unknown-field": ({**NODE, "note": SECRET}, "note"),
    "non-string": ({**NODE, wire.COUNTRY: 49}, wire.COUNTRY),
    "bytes": ({**NODE, wire.COUNTRY: b"DE"}, wire.COUNTRY),
    "list": ({**NODE, wire.COUNTRY: ["DE", "FR"]}, wire.COUNTRY),
}


@pytest.mark.parametrize("case", list(NODE_VIOLATIONS))
def test_bad_node_field_is_dropped_and_logged(case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    node, dropped = NODE_VIOLATIONS[case]
    sent = instruction()

    guarded = guard_reply(sent, reply(sent, node=node))

    kept = dict(guarded.content.config_records[wire.NODE])
    assert dropped not in kept
    assert kept == {k: v for k, v in NODE.items() if k != dropped}
    logged = warnings_logged(caplog)
    assert len(logged) == 1
    assert repr(dropped) in logged[0]


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (
            wire.REFUSED,
            Refusal(
                RefusalCode.DATASET_BUDGET, {"budget": 8.0, "spent": 7.5, "needed": 1.2}
            ).encode(),
        ),
        (wire.REFUSED, Refusal(RefusalCode.NOT_IN_JOB).encode()),
        (wire.NODE_FAULT, wire.NODE_FAULT_REASON),
    ],
)
def test_error_reply_with_a_coded_reason_passes(
    code: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    sent = instruction()

    guarded = guard_reply(sent, Message(Error(code, reason), reply_to=sent))

    assert guarded.has_error()
    assert not guarded.has_content()
    assert (guarded.error.code, guarded.error.reason) == (code, reason)
    assert warnings_logged(caplog) == []


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        pytest.param(
            wire.NODE_FAULT, f"<class 'ValueError'>:<'could not parse row: {SECRET}'>", id="quotes"
        ),
        pytest.param(wire.NODE_FAULT, f'bad row "{SECRET}"', id="double-quotes"),
        pytest.param(wire.NODE_FAULT, f"bad row\n{SECRET}", id="newline"),
        pytest.param(wire.NODE_FAULT, "Patient Müller, 45", id="non-ascii"),
        pytest.param(wire.NODE_FAULT, "x" * 401, id="too-long"),
        pytest.param(wire.NODE_FAULT, "", id="empty"),
        # Plain ASCII sentences passed the old character-class check: a path, a name.
        pytest.param(wire.REFUSED, "cannot read /data/de/patients_hiv.csv", id="path"),
        pytest.param(wire.REFUSED, "DE refused round 3: Jane Doe, 45, chest pain", id="name"),
        pytest.param(wire.REFUSED, '{"code":"not-in-job","name":1}', id="extra-field"),
        pytest.param(wire.REFUSED, '{"code":"job-budget","budget":8.0}', id="missing-field"),
        pytest.param(
            wire.REFUSED,
            '{"code":"job-budget","budget":"Jane Doe","spent":1.0,"needed":1.0}',
            id="text-field",
        ),
        pytest.param(wire.REFUSED, '{"code":"jane-doe"}', id="unknown-code"),
        pytest.param(
            wire.REFUSED, '{"code": "not-in-job"}', id="not-canonical"
        ),  # spacing is a channel
    ],
)
def test_error_reply_with_any_other_reason_is_replaced(
    code: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    sent = instruction(node_id=3)

    guarded = guard_reply(sent, Message(Error(code, reason), reply_to=sent))

    assert guarded.has_error()
    assert guarded.error.code == wire.NODE_FAULT
    assert guarded.error.reason == GENERIC_REASON
    assert guarded.metadata.reply_to_message_id == sent.metadata.message_id
    assert guarded.metadata.src_node_id == 3
    assert len(warnings_logged(caplog)) == 1


def node_context() -> Context:
    return Context(run_id=11, node_id=1, node_config={}, state=RecordDict(), run_config={})


def test_mod_filters_what_the_handler_returns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    sent = instruction()
    seen: list[Message] = []

    def handler(msg: Message, context: Context) -> Message:
        seen.append(msg)
        return reply(msg, extra={"debug": ConfigRecord({"text": SECRET})})

    guarded = egress_guard(sent, node_context(), handler)

    assert seen == [sent]
    assert set(guarded.content.keys()) == {wire.ARRAYS, wire.METRICS, wire.NODE}
    assert any("'debug'" in line for line in warnings_logged(caplog))


def test_mod_does_not_let_an_exception_carry_record_text_out() -> None:
    """Flower turns an exception escaping the handler into an error reply with its text.

    That reply is built outside every mod, so the guard must catch the exception itself.
    """
    sent = instruction()

    def handler(msg: Message, context: Context) -> Message:
        raise ValueError(f"could not encode row {SECRET!r}")

    guarded = egress_guard(sent, node_context(), handler)

    assert guarded.has_error()
    assert SECRET not in guarded.error.reason
    assert guarded.error.reason == GENERIC_REASON


@pytest.mark.parametrize(
    ("settings", "phrase", "said"),
    [
        (
            {"country": "IT"},
            "the job names DE, FR, ES, not this node",
            "IT refused round 1: the job does not name this node's country",
        ),
        (
            {"budget_epsilon": 4.0},
            "target epsilon 8 exceeds the budget 4 set by this node",
            "IT refused round 1: target epsilon 8 exceeds the node's budget 4",
        ),
        (
            {"delta": 1e-6},
            "delta 0.0001 exceeds the limit 1e-06 set by this node",
            "IT refused round 1: delta 0.0001 exceeds the node's limit 1e-06",
        ),
        (
            {"labels": ["neg", "pos", "obj"]},
            "node.toml declares 'text', 'label', ['neg', 'pos', 'obj']",
            "IT refused round 1: the job's labels (or their order) differ from the schema "
            "the node's operator declared in node.toml",
        ),
    ],
    ids=["country", "budget", "delta", "schema"],
)
def test_node_refusals_reach_the_coordinator_as_codes_and_numbers(
    tmp_path: Path, settings: dict[str, object], phrase: str, said: str
) -> None:
    from residency.client.admission import check_operator_limits
    from residency.client.node_config import NodeSettings
    from residency.common.config.job import load_job
    from residency.common.config.round_plan import RoundPlan, round_config
    from residency.common.errors import PolicyViolation
    from toy_federation import write_toy_job

    job = load_job(write_toy_job(tmp_path / "job"))
    plan = RoundPlan.from_record(round_config(job, base_fingerprint="0" * 64) | {"server-round": 1})
    node = NodeSettings.model_validate(
        {
            "country": "DE",
            "data": "d.csv",
            "state": "s",
            "budget_epsilon": 8.0,
            "delta": 1e-4,
            "labels": ["pos", "neg", "obj"],
            "public_records": 150,
            **settings,
        }
    )
    with pytest.raises(PolicyViolation) as refused:
        check_operator_limits(node, plan)
    assert phrase in str(refused.value)  # the node's own log
    sent = instruction()
    reply = Message(Error(wire.REFUSED, refused.value.refusal.encode()), reply_to=sent)
    guarded = guard_reply(sent, reply)
    assert guarded.error.code == wire.REFUSED  # not withheld by the egress guard
    assert describe(guarded.error.reason, country="IT", server_round=1) == said


def _signed_record_fields(tmp_path: Path, **changes: Any) -> dict[str, str]:
    """A valid signed record from the ledger factory, optionally altered before signing."""
    made = write_ledger(tmp_path, countries=("DE",), rounds=1, refuse=None)
    line = made.node_ledgers["DE"].read_text("ascii").splitlines()[-1]
    body = json.loads(line)["record"]["body"]
    record = PrivacyRecord.model_validate_json(body).model_copy(update=changes)
    signed = sign_record(record, made.signers["DE"])
    return {wire.RECORD_BODY: signed.body, wire.RECORD_SIGNATURE: signed.signature}


def test_a_valid_signed_record_passes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    sent = instruction()
    fields = _signed_record_fields(tmp_path)

    guarded = guard_reply(sent, reply(sent, extra={wire.RECORD: ConfigRecord(fields)}))

    assert dict(guarded.content.config_records[wire.RECORD]) == fields
    assert warnings_logged(caplog) == []


@pytest.mark.parametrize("case", ["extra-field", "text-in-body", "bad-signature", "not-canonical"])
def test_a_record_that_is_not_exactly_a_valid_one_is_dropped(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    sent = instruction()
    fields = _signed_record_fields(tmp_path)
    if case == "extra-field":
        fields["note"] = SECRET
    elif case == "text-in-body":
        body = json.loads(fields[wire.RECORD_BODY])
        body["policy_name"] = SECRET
        fields[wire.RECORD_BODY] = json.dumps(body, sort_keys=True, separators=(",", ":"))
    elif case == "bad-signature":
        fields[wire.RECORD_SIGNATURE] = "0" * 128
    else:
        fields[wire.RECORD_BODY] = json.dumps(json.loads(fields[wire.RECORD_BODY]), indent=1)

    guarded = guard_reply(sent, reply(sent, extra={wire.RECORD: ConfigRecord(fields)}))

    assert wire.RECORD not in guarded.content.config_records
    assert any("privacy record" in w for w in warnings_logged(caplog))
