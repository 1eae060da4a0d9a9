"""Coordinator-side checks: a bad reply never reaches the average, and FedAvg is a weighted mean."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from residency.common import wire
from residency.common.errors import InvalidUpdate
from residency.common.refusal import Refusal, RefusalCode
from residency.server.strategy import ValidatingStrategy
from residency.server.validation import (
    MAX_EXAMPLES,
    validate_metrics,
    validate_reply,
    validate_update,
)

pytestmark = pytest.mark.unit

SHAPES = {"classifier.weight": (3, 4), "classifier.bias": (3,), "lora_A.query": (2, 4)}
GLOBAL = {
    name: np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    for name, shape in SHAPES.items()
}
METRICS: dict[str, int | float] = {
    wire.NUM_EXAMPLES: 100,
    wire.STEPS: 10,
    wire.EPSILON: 1.5,
    wire.EPSILON_ROUND: 0.5,
    wire.DELTA: 1e-5,
    wire.NOISE_MULTIPLIER: 1.1,
    wire.SAMPLE_RATE: 0.1,
    wire.MAX_GRAD_NORM: 1.0,
}
BUDGET_REFUSAL = Refusal(
    RefusalCode.DATASET_BUDGET, {"budget": 1.0, "spent": 0.9, "needed": 0.3}
).encode()


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages take run and node ids from the process' task identity."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 5)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})


def npy_bytes(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def metrics(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {**METRICS, **changes}
    return {k: v for k, v in values.items() if v is not None}


def train_reply(
    node_id: int,
    *,
    arrays: dict[str, Any] | None = None,
    metric_values: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Message:
    """A node's reply to a train instruction; ``arrays`` values may be ndarrays or Arrays."""
    sent = Message(
        RecordDict({wire.ARRAYS: record(GLOBAL), wire.CONFIG: ConfigRecord({"server-round": 1})}),
        dst_node_id=node_id,
        message_type="train",
    )
    sent.metadata.__dict__["_message_id"] = sent.object_id  # as the SuperLink does
    content: dict[str, Any] = {}
    if arrays is not None:
        content[wire.ARRAYS] = ArrayRecord(
            {k: v if isinstance(v, Array) else Array(v) for k, v in arrays.items()}
        )
    if metric_values is not None:
        content[wire.METRICS] = MetricRecord(metric_values)
    content[wire.NODE] = ConfigRecord({wire.COUNTRY: "DE"})
    content.update(extra or {})
    return Message(RecordDict(content), reply_to=sent)


def error_reply(node_id: int, code: int, reason: str) -> Message:
    sent = Message(RecordDict(), dst_node_id=node_id, message_type="train")
    sent.metadata.__dict__["_message_id"] = sent.object_id
    return Message(Error(code, reason), reply_to=sent)


def good_reply(node_id: int, examples: int) -> Message:
    return train_reply(
        node_id, arrays=weights(node_id), metric_values=metrics(**{wire.NUM_EXAMPLES: examples})
    )


def strategy(nodes: int = 3) -> ValidatingStrategy:
    fedavg = ValidatingStrategy()
    fedavg.train_messages(1, record(GLOBAL), ConfigRecord(), range(nodes), ttl_s=60)
    return fedavg


def reference_average(pairs: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """The slow reference: sum(n_i * w_i) / sum(n_i), in float64, one tensor at a time."""
    total = sum(n for n, _ in pairs)
    result = {}
    for name in SHAPES:
        acc = np.zeros(SHAPES[name], dtype=np.float64)
        for n, w in pairs:
            acc += n * w[name].astype(np.float64)
        result[name] = acc / total
    return result


def assert_average(aggregate: ArrayRecord | None, pairs: list[tuple[int, dict[str, Any]]]) -> None:
    assert aggregate is not None
    got = {name: array.numpy() for name, array in aggregate.items()}
    expected = reference_average(pairs)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].shape == value.shape
        assert got[name].dtype == GLOBAL[name].dtype
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- validate_update


def test_matching_update_is_accepted() -> None:
    validate_update(record(weights(3)), record(GLOBAL))


def test_update_in_another_order_is_accepted() -> None:
    update = dict(reversed(list(weights(3).items())))

    validate_update(record(update), record(GLOBAL))


@pytest.mark.parametrize(
    ("update", "phrase"),
    [
        pytest.param(
            {k: v for k, v in weights(3).items() if k != "classifier.bias"},
            "classifier.bias",
            id="missing",
        ),
        pytest.param(
            {**weights(3), "bert.pooler.dense": np.ones((4, 4), dtype=np.float32)},
            "1 unexpected",
            id="extra",
        ),
        pytest.param({}, "missing", id="empty"),
        pytest.param(
            {**weights(3), "classifier.weight": np.ones((4, 3), dtype=np.float32)},
            "classifier.weight",
            id="shape",
        ),
        pytest.param(
            {**weights(3), "classifier.bias": np.ones((1, 3), dtype=np.float32)},
            "classifier.bias",
            id="extra-dim",
        ),
        pytest.param(
            {**weights(3), "lora_A.query": np.ones((2, 4), dtype=np.float64)},
            "lora_A.query",
            id="float64",
        ),
        pytest.param(
            {**weights(3), "lora_A.query": np.ones((2, 4), dtype=np.float16)},
            "lora_A.query",
            id="float16",
        ),
        pytest.param(
            {**weights(3), "classifier.bias": np.ones(3, dtype=np.int32)},
            "classifier.bias",
            id="int32",
        ),
    ],
)
def test_mismatched_update_is_rejected(update: dict[str, np.ndarray], phrase: str) -> None:
    with pytest.raises(InvalidUpdate, match=phrase.replace(".", r"\.")):
        validate_update(record(update), record(GLOBAL))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_update_is_rejected(bad: float) -> None:
    update = weights(3)
    update["classifier.weight"][1, 2] = bad

    with pytest.raises(InvalidUpdate, match=r"classifier\.weight.*NaN or infinity"):
        validate_update(record(update), record(GLOBAL))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(np.ones((4, 3), dtype=np.float32), id="other-shape"),
        pytest.param(np.ones((3, 4), dtype=np.float64), id="other-dtype"),
        pytest.param(np.ones((1, 4), dtype=np.float32), id="broadcastable"),
        pytest.param(np.array(["Jane Doe"]), id="text"),
    ],
)
def test_update_payload_must_match_its_declared_metadata(payload: np.ndarray) -> None:
    """An Array's dtype/shape fields are metadata sent by the node; the bytes are what counts."""
    lying = Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray", data=npy_bytes(payload))
    update = record(weights(3))
    update["classifier.weight"] = lying

    with pytest.raises(InvalidUpdate, match=r"classifier\.weight"):
        validate_update(update, record(GLOBAL))


@pytest.mark.parametrize(
    ("stype", "data"),
    [
        pytest.param("numpy.ndarray", b"junk", id="not-npy"),
        pytest.param("numpy.ndarray", npy_bytes(np.ones((3, 4), np.float32))[:-8], id="truncated"),
        pytest.param("torch.tensor", npy_bytes(np.ones((3, 4), np.float32)), id="stype"),
    ],
)
def test_undecodable_update_is_invalid_not_a_crash(stype: str, data: bytes) -> None:
    bad = Array(dtype="float32", shape=(3, 4), stype=stype, data=data)
    update = record(weights(3))
    update["classifier.weight"] = bad

    with pytest.raises(InvalidUpdate):
        validate_update(update, record(GLOBAL))


def test_a_rejection_never_quotes_what_the_node_chose() -> None:
    """Reasons are kept in results.json and the ledger: a name a node picked is a channel."""
    secret = "Jane Doe 45 chest pain"
    with pytest.raises(InvalidUpdate) as tensors:
        validate_update(record({**weights(3), secret: np.ones(1, np.float32)}), record(GLOBAL))
    with pytest.raises(InvalidUpdate) as metric_keys:
        validate_metrics(MetricRecord({**metrics(), secret: 1.0}))
    with pytest.raises(InvalidUpdate) as records:
        validate_reply(RecordDict({secret: MetricRecord({"x": 1.0})}), record(GLOBAL))
    for caught in (tensors, metric_keys, records):
        assert secret not in str(caught.value)


# ---------------------------------------------------------------------------- validate_metrics


def test_plausible_metrics_are_accepted() -> None:
    validate_metrics(MetricRecord(metrics()))
    validate_metrics(MetricRecord(metrics(**{wire.EPSILON: 0.0, wire.EPSILON_ROUND: 0.0})))
    validate_metrics(MetricRecord(metrics(**{wire.NUM_EXAMPLES: MAX_EXAMPLES})))


@pytest.mark.parametrize("key", sorted(wire.REPLY_METRICS))
def test_missing_metric_is_rejected(key: str) -> None:
    with pytest.raises(InvalidUpdate, match=key):
        validate_metrics(MetricRecord(metrics(**{key: None})))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param(wire.NUM_EXAMPLES, 0, id="examples-zero"),
        pytest.param(wire.NUM_EXAMPLES, -10, id="examples-negative"),
        pytest.param(wire.NUM_EXAMPLES, 100.0, id="examples-float"),
        pytest.param(wire.NUM_EXAMPLES, 0.5, id="examples-fraction"),
        pytest.param(wire.NUM_EXAMPLES, MAX_EXAMPLES + 1, id="examples-huge"),
        pytest.param(wire.NUM_EXAMPLES, math.nan, id="examples-nan"),
        pytest.param(wire.EPSILON, -0.1, id="epsilon-negative"),
        pytest.param(wire.EPSILON, math.nan, id="epsilon-nan"),
        pytest.param(wire.EPSILON, math.inf, id="epsilon-inf"),
        pytest.param(wire.EPSILON_ROUND, -1.0, id="round-epsilon-negative"),
        pytest.param(wire.NOISE_MULTIPLIER, math.nan, id="noise-nan"),
        pytest.param(wire.NOISE_MULTIPLIER, -1.0, id="noise-negative"),
        pytest.param(wire.SAMPLE_RATE, -0.1, id="sample-rate-negative"),
        pytest.param(wire.SAMPLE_RATE, math.inf, id="sample-rate-inf"),
    ],
)
def test_implausible_metric_is_rejected(key: str, value: float) -> None:
    with pytest.raises(InvalidUpdate, match=key):
        validate_metrics(MetricRecord(metrics(**{key: value})))


@pytest.mark.parametrize("key", [wire.NUM_EXAMPLES, wire.EPSILON, wire.SAMPLE_RATE])
def test_list_valued_metric_is_invalid_not_a_crash(key: str) -> None:
    with pytest.raises(InvalidUpdate, match=key):
        validate_metrics(MetricRecord(metrics(**{key: [1.0, 2.0]})))


# ---------------------------------------------------------------------------- the strategy


def test_fedavg_of_valid_replies_is_the_example_weighted_mean() -> None:
    fedavg = strategy()
    replies = [good_reply(1, 10), good_reply(2, 30), good_reply(3, 60)]

    arrays, train_metrics = fedavg.aggregate_train(1, replies)

    assert_average(arrays, [(10, weights(1)), (30, weights(2)), (60, weights(3))])
    assert fedavg.aggregator.weighted_by_key == wire.NUM_EXAMPLES  # Flower weighs by it
    assert train_metrics is not None
    assert dict(train_metrics) == {}  # each reply metric is one country's; none is averaged
    assert [r.metadata.src_node_id for r in fedavg.accepted] == [1, 2, 3]
    assert fedavg.rejected == []


def test_single_reply_is_returned_as_is() -> None:
    arrays, _ = strategy().aggregate_train(1, [good_reply(4, 17)])

    assert_average(arrays, [(17, weights(4))])


def test_invalid_and_error_replies_are_left_out_of_the_average() -> None:
    fedavg = strategy(nodes=8)
    nan_update = weights(3)
    nan_update["lora_A.query"][0, 0] = math.nan
    replies = [
        good_reply(1, 10),
        train_reply(3, arrays=nan_update, metric_values=metrics(**{wire.NUM_EXAMPLES: 1000})),
        train_reply(
            4,
            arrays={**weights(4), "extra": np.ones(2, dtype=np.float32)},
            metric_values=metrics(**{wire.NUM_EXAMPLES: 1000}),
        ),
        train_reply(5, arrays=weights(5), metric_values=metrics(**{wire.EPSILON: None})),
        train_reply(6, arrays=weights(6)),  # no metrics record at all
        error_reply(7, wire.REFUSED, BUDGET_REFUSAL),
        error_reply(8, wire.NODE_FAULT, wire.NODE_FAULT_REASON),
        train_reply(9, metric_values=metrics()),  # no arrays at all
        good_reply(2, 30),
    ]

    arrays, _ = fedavg.aggregate_train(1, replies)

    assert_average(arrays, [(10, weights(1)), (30, weights(2))])
    assert [r.metadata.src_node_id for r in fedavg.accepted] == [1, 2]
    rejected = {r.node_id: r for r in fedavg.rejected}
    assert sorted(rejected) == [3, 4, 5, 6, 7, 8, 9]
    assert {node for node, r in rejected.items() if r.refused} == {7}
    assert rejected[7].reason == (
        "node 7 refused round 1: dataset budget 1.00, spent 0.90, round needs 0.30"
    )
    assert rejected[8].reason == f"node 8 failed round 1: {wire.NODE_FAULT_REASON}"
    assert "NaN" in rejected[3].reason
    assert "1 unexpected" in rejected[4].reason
    assert wire.EPSILON in rejected[5].reason
    for node in (3, 4, 5, 6, 9):
        assert rejected[node].reason.startswith("update rejected: ")


def test_an_errors_own_text_is_never_kept() -> None:
    fedavg = strategy()
    leak = "Jane Doe, born 1961-04-02: /data/de/notes.csv line 17"
    replies = [
        error_reply(2, wire.NODE_FAULT, ""),
        error_reply(3, wire.NODE_FAULT, leak),
        error_reply(4, wire.REFUSED, leak),
        error_reply(5, 2, leak),  # Flower's "ClientApp raised an exception"
        error_reply(6, wire.NODE_FAULT, wire.WITHHELD_REASON),  # the egress guard's sentence
        good_reply(1, 5),
    ]

    fedavg.aggregate_train(1, replies)

    assert [(r.node_id, r.reason, r.refused) for r in fedavg.rejected] == [
        (2, "node 2 failed round 1: node error (reason not readable)", False),
        (3, "node 3 failed round 1: node error (reason not readable)", False),
        (4, "node 4 refused round 1 (reason not readable)", True),
        (5, "node 5 failed round 1: error code 2 (client app raised exception)", False),
        (6, f"node 6 failed round 1: {wire.WITHHELD_REASON}", False),
    ]


def test_nothing_valid_returns_none() -> None:
    fedavg = strategy()
    bad = weights(2)
    bad["classifier.bias"][0] = math.inf
    replies = [
        error_reply(1, wire.REFUSED, BUDGET_REFUSAL),
        train_reply(2, arrays=bad, metric_values=metrics()),
    ]

    assert fedavg.aggregate_train(2, replies) == (None, None)
    assert fedavg.accepted == []
    assert [(r.node_id, r.refused) for r in fedavg.rejected] == [(1, True), (2, False)]


def test_no_replies_returns_none() -> None:
    fedavg = strategy()

    assert fedavg.aggregate_train(1, []) == (None, None)
    assert fedavg.rejected == []


def test_each_round_starts_with_fresh_bookkeeping() -> None:
    fedavg = strategy()
    fedavg.aggregate_train(1, [error_reply(1, wire.REFUSED, BUDGET_REFUSAL), good_reply(2, 5)])

    fedavg.aggregate_train(2, [good_reply(1, 5), good_reply(2, 5)])

    assert fedavg.rejected == []
    assert [r.metadata.src_node_id for r in fedavg.accepted] == [1, 2]


def test_update_is_checked_against_the_arrays_sent_this_round() -> None:
    fedavg = strategy()
    fedavg._sent = record({"classifier.weight": GLOBAL["classifier.weight"]})

    arrays, _ = fedavg.aggregate_train(1, [good_reply(1, 5)])

    assert arrays is None
    assert [r.node_id for r in fedavg.rejected] == [1]


def lying_array() -> Array:
    return Array(
        dtype="float32",
        shape=(3, 4),
        stype="numpy.ndarray",
        data=npy_bytes(np.full((1, 4), 1e6, dtype=np.float32)),
    )


MALFORMED = {
    "second-array-record": {
        "extra": {"smuggled": ArrayRecord({"x": Array(np.ones(2, dtype=np.float32))})}
    },
    "second-metric-record": {"extra": {"more-metrics": MetricRecord({"x": 1.0})}},
    "extra-metric-key": {"metric_values": metrics(**{"accuracy": 0.9})},
    "list-metric": {"metric_values": metrics(**{wire.EPSILON: [0.1, 0.2]})},
    "payload-not-metadata": {"arrays": {**weights(9), "classifier.weight": lying_array()}},
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_reply_is_rejected_without_failing_the_round(case: str) -> None:
    """One node's malformed reply must cost that node its round, not everyone theirs."""
    fedavg = strategy()
    parts: dict[str, Any] = {"arrays": weights(9), "metric_values": metrics(), **MALFORMED[case]}
    replies = [good_reply(1, 10), train_reply(9, **parts), good_reply(2, 30)]

    arrays, _ = fedavg.aggregate_train(1, replies)

    assert_average(arrays, [(10, weights(1)), (30, weights(2))])
    assert [r.node_id for r in fedavg.rejected] == [9]


def test_a_node_claiming_another_country_than_its_admission_is_rejected() -> None:
    from residency.server.replies import Countries, node_round
    from residency.server.results import NodeStatus

    reply = train_reply(7, arrays=GLOBAL, metric_values=metrics())  # reports DE
    honest = node_round(reply, 0, Countries({}, {7: "DE"}), server_round=1)
    assert honest.status is NodeStatus.OK
    assert honest.country == "DE"

    impostor = node_round(reply, 0, Countries({}, {7: "FR"}), server_round=1)
    assert impostor.status is NodeStatus.REJECTED
    assert impostor.country == "FR"
    assert impostor.reason == "reports country DE but its key was admitted for FR"

    refused = node_round(
        error_reply(7, wire.REFUSED, BUDGET_REFUSAL), 0, Countries({}, {7: "FR"}), server_round=3
    )
    assert refused.country == "FR"  # an error reply carries no country; the admission does
    assert refused.reason == (
        "FR refused round 3: dataset budget 1.00, spent 0.90, round needs 0.30"
    )


def test_a_malformed_country_is_rejected_and_never_shown() -> None:
    from residency.server.replies import Countries, node_round
    from residency.server.results import NodeStatus

    reply = train_reply(7, arrays=GLOBAL, metric_values=metrics())
    reply.content.config_records[wire.NODE] = ConfigRecord({wire.COUNTRY: "Jane Doe"})
    countries = Countries({}, {})

    report = node_round(reply, 0, countries, server_round=1)

    assert report.status is NodeStatus.REJECTED
    assert (report.country, report.reason) == ("node-7", "reports a malformed country code")
    assert countries.names == {}
