"""Robust aggregation: one node's scaled update moves FedAvg, not the median or trimmed mean.

Also the update-norm bound (the scaled update is rejected with a readable reason, the rest are
averaged), validation under every option, and the job settings that would promise robustness
a round cannot deliver, refused in one line with a fix.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg
from flwr.supercore.task_identity import TaskIdentity

from residency.common import wire
from residency.common.config.job import DEFAULT_TRIM_FRACTION, Job, TrainSection, load_job
from residency.common.config.kinds import Aggregation, Combine
from residency.common.errors import ConfigError, InvalidUpdate
from residency.common.updates import prototypes
from residency.server.strategy import ValidatingStrategy
from residency.server.validation import update_norm, validate_update_norm
from toy_federation import write_toy_job

pytestmark = pytest.mark.unit

SHAPES = {"classifier.weight": (3, 4), "classifier.bias": (3,), "lora_A.query": (2, 4)}
GLOBAL = {
    name: np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    for name, shape in SHAPES.items()
}
HONEST = (1, 2, 3, 4, 5)
ATTACKER = 6
STEP = 0.01
"""Spread of an honest node's change per coordinate: its update has norm about 0.05."""
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
ALL = list(Aggregation)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages take run and node ids from the process' task identity."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 5)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


# ---------------------------------------------------------------------------- fake replies


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})


def honest(node: int) -> dict[str, np.ndarray]:
    """The global weights plus a small change of the node's own."""
    rng = np.random.default_rng(100 + node)
    return {
        name: (value + STEP * rng.standard_normal(value.shape)).astype(np.float32)
        for name, value in GLOBAL.items()
    }


def scaled(node: int, factor: float) -> dict[str, np.ndarray]:
    """An honest-looking change blown up ``factor`` times (model replacement)."""
    return {
        name: (GLOBAL[name] + factor * (value - GLOBAL[name])).astype(np.float32)
        for name, value in honest(node).items()
    }


def shifted(offset: float) -> dict[str, np.ndarray]:
    """Every weight moved by the same large constant."""
    return {name: (value + offset).astype(np.float32) for name, value in GLOBAL.items()}


ATTACKS = {"scaled-x100": lambda: scaled(ATTACKER, 100.0), "shifted-1000": lambda: shifted(1e3)}


def reply(
    node: int,
    arrays: dict[str, Any] | None,
    *,
    examples: int = 100,
    metric_values: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Message:
    """A node's reply to a train instruction (what ``train_reply`` builds in the FedAvg tests)."""
    sent = Message(
        RecordDict({wire.ARRAYS: record(GLOBAL), wire.CONFIG: ConfigRecord({"server-round": 1})}),
        dst_node_id=node,
        message_type="train",
    )
    sent.metadata.__dict__["_message_id"] = sent.object_id  # as the SuperLink does
    content: dict[str, Any] = {wire.NODE: ConfigRecord({wire.COUNTRY: "DE"})}
    if arrays is not None:
        content[wire.ARRAYS] = record(arrays)
    values = {**METRICS, wire.NUM_EXAMPLES: examples} if metric_values is None else metric_values
    content[wire.METRICS] = MetricRecord(values)
    content.update(extra or {})
    return Message(RecordDict(content), reply_to=sent)


def error_reply(node: int) -> Message:
    sent = Message(RecordDict(), dst_node_id=node, message_type="train")
    sent.metadata.__dict__["_message_id"] = sent.object_id
    return Message(Error(wire.NODE_FAULT, wire.NODE_FAULT_REASON), reply_to=sent)


def strategy(
    aggregation: Aggregation = Aggregation.FEDAVG,
    *,
    sent: dict[str, np.ndarray] = GLOBAL,
    **options: Any,
) -> ValidatingStrategy:
    chosen = ValidatingStrategy(aggregation=aggregation, **options)
    chosen.train_messages(1, record(sent), ConfigRecord(), range(1, 7), ttl_s=60)
    return chosen


def round_of(attack: dict[str, np.ndarray] | None) -> list[Message]:
    replies = [reply(node, honest(node)) for node in HONEST]
    return replies + ([] if attack is None else [reply(ATTACKER, attack)])


def aggregate(chosen: ValidatingStrategy, replies: list[Message]) -> dict[str, np.ndarray]:
    arrays, _ = chosen.aggregate_train(1, replies)
    assert arrays is not None
    return {name: array.numpy() for name, array in arrays.items()}


def honest_mean() -> dict[str, np.ndarray]:
    return {
        name: np.mean([honest(node)[name].astype(np.float64) for node in HONEST], axis=0)
        for name in SHAPES
    }


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """L2 distance over every tensor at once."""
    return math.sqrt(
        sum(float(np.sum((a[n].astype(np.float64) - b[n].astype(np.float64)) ** 2)) for n in a)
    )


def distances(attack: dict[str, np.ndarray]) -> dict[Aggregation, float]:
    """How far each option's aggregate lands from the honest nodes' mean, under ``attack``."""
    target = honest_mean()
    return {a: distance(aggregate(strategy(a), round_of(attack)), target) for a in Aggregation}


# ---------------------------------------------------------------------------- the attack


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_one_scaled_update_moves_fedavg_and_not_the_robust_options(attack: str) -> None:
    honest_size = np.mean([distance(honest(node), GLOBAL) for node in HONEST])

    moved = distances(ATTACKS[attack]())

    assert moved[Aggregation.FEDAVG] > 10 * honest_size  # one node dragged the whole model
    for robust in (Aggregation.TRIMMED_MEAN, Aggregation.MEDIAN):
        assert moved[robust] < honest_size, robust  # within the honest nodes' own spread


def test_without_an_attack_every_option_stays_with_the_honest_nodes() -> None:
    honest_size = np.mean([distance(honest(node), GLOBAL) for node in HONEST])
    target = honest_mean()

    for aggregation in Aggregation:
        landed = distance(aggregate(strategy(aggregation), round_of(None)), target)
        assert landed < honest_size / 2, aggregation


def slow_reference(
    aggregation: Aggregation, updates: list[dict[str, np.ndarray]], beta: float
) -> dict[str, np.ndarray]:
    """One coordinate at a time in float64: sort, drop ``int(beta × n)`` at each end, mean."""
    result = {}
    for name, shape in SHAPES.items():
        out = np.zeros(shape, dtype=np.float64)
        for index in np.ndindex(*shape):
            values = sorted(float(u[name][index]) for u in updates)
            if aggregation is Aggregation.MEDIAN:
                middle = len(values) // 2
                kept = values[middle - 1 : middle + 1] if len(values) % 2 == 0 else [values[middle]]
            else:
                cut = int(beta * len(values))
                kept = values[cut : len(values) - cut]
            out[index] = sum(kept) / len(kept)
        result[name] = out
    return result


@pytest.mark.parametrize(
    ("aggregation", "beta"),
    [
        (Aggregation.MEDIAN, DEFAULT_TRIM_FRACTION),
        (Aggregation.TRIMMED_MEAN, DEFAULT_TRIM_FRACTION),
        (Aggregation.TRIMMED_MEAN, 0.34),
        (Aggregation.TRIMMED_MEAN, 0.1),  # int(0.1 × 6) = 0: nothing trimmed, the plain mean
    ],
)
def test_robust_aggregates_match_a_slow_reference(aggregation: Aggregation, beta: float) -> None:
    updates = [honest(node) for node in HONEST] + [scaled(ATTACKER, 100.0)]
    options = {"trim_fraction": beta} if aggregation is Aggregation.TRIMMED_MEAN else {}

    got = aggregate(strategy(aggregation, **options), round_of(scaled(ATTACKER, 100.0)))

    expected = slow_reference(aggregation, updates, beta)
    for name, value in expected.items():
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def test_the_aggregation_is_flowers_own() -> None:
    assert type(strategy().aggregator) is FedAvg
    assert type(strategy(Aggregation.MEDIAN).aggregator) is FedMedian
    trimmed = strategy(Aggregation.TRIMMED_MEAN, trim_fraction=0.3).aggregator
    assert isinstance(trimmed, FedTrimmedAvg)
    assert trimmed.beta == 0.3
    default = strategy(Aggregation.TRIMMED_MEAN).aggregator
    assert isinstance(default, FedTrimmedAvg)
    assert default.beta == DEFAULT_TRIM_FRACTION


def test_the_robust_options_ignore_example_counts_and_fedavg_weights_them() -> None:
    """Flower's median and trimmed mean are unweighted: a large signed count buys no share."""
    replies = [reply(node, honest(node)) for node in HONEST]
    big = reply(ATTACKER, scaled(ATTACKER, 100.0), examples=10**6)
    small = reply(ATTACKER, scaled(ATTACKER, 100.0), examples=1)
    target = honest_mean()

    for aggregation in (Aggregation.TRIMMED_MEAN, Aggregation.MEDIAN):
        heavy = aggregate(strategy(aggregation), [*replies, big])
        light = aggregate(strategy(aggregation), [*replies, small])
        assert distance(heavy, light) == 0.0
    heavy = aggregate(strategy(), [*replies, big])
    light = aggregate(strategy(), [*replies, small])
    assert distance(heavy, target) > 100 * distance(light, target)


# ---------------------------------------------------------------------------- the norm bound


def slow_norm(update: dict[str, np.ndarray], sent: dict[str, np.ndarray]) -> float:
    return math.sqrt(
        sum(
            (float(update[name][index]) - float(sent[name][index])) ** 2
            for name in sent
            for index in np.ndindex(*sent[name].shape)
        )
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_update_norm_matches_a_slow_reference(dtype: type[np.floating[Any]]) -> None:
    sent = {name: value.astype(dtype) for name, value in GLOBAL.items()}
    update = {name: value.astype(dtype) for name, value in scaled(ATTACKER, 100.0).items()}

    norm = update_norm(record(update), record(sent))

    assert norm == pytest.approx(slow_norm(update, sent), rel=1e-12)


@pytest.mark.parametrize("aggregation", ALL)
def test_max_update_norm_rejects_the_scaled_update_and_combines_the_rest(
    aggregation: Aggregation,
) -> None:
    bounded = strategy(aggregation, max_update_norm=1.0)
    unbounded = strategy(aggregation)

    got = aggregate(bounded, round_of(scaled(ATTACKER, 100.0)))

    norm = slow_norm(scaled(ATTACKER, 100.0), GLOBAL)
    assert [(r.node_id, r.refused) for r in bounded.rejected] == [(ATTACKER, False)]
    assert bounded.rejected[0].reason == (
        f"update rejected: L2 norm {norm:.3g} exceeds [train] max_update_norm 1"
    )
    assert [r.metadata.src_node_id for r in bounded.accepted] == list(HONEST)
    assert distance(got, aggregate(unbounded, round_of(None))) == 0.0


def test_an_update_exactly_at_the_bound_is_kept() -> None:
    bound = update_norm(record(honest(3)), record(GLOBAL))

    assert validate_update_norm(record(honest(3)), record(GLOBAL), bound=bound) == bound
    with pytest.raises(InvalidUpdate, match="exceeds"):
        validate_update_norm(record(honest(3)), record(GLOBAL), bound=bound * (1 - 1e-6))


def test_the_norm_is_measured_from_the_arrays_sent_this_round() -> None:
    """An update equal to last round's model is a large change if this round sent another."""
    moved = shifted(1.0)
    chosen = strategy(max_update_norm=1.0, sent=moved)

    aggregate(chosen, [reply(1, moved), reply(2, GLOBAL)])

    assert [r.metadata.src_node_id for r in chosen.accepted] == [1]
    assert [r.node_id for r in chosen.rejected] == [2]


def test_without_a_bound_every_valid_update_is_kept_and_its_norm_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chosen = strategy()

    with caplog.at_level("INFO", logger="residency.coordinator"):
        aggregate(chosen, round_of(scaled(ATTACKER, 100.0)))

    assert chosen.rejected == []
    norm = slow_norm(scaled(ATTACKER, 100.0), GLOBAL)
    assert f"round 1: node {ATTACKER} update norm {norm:.4g}" in caplog.text


# ---------------------------------------------------------------------------- validation


def nan_update() -> dict[str, np.ndarray]:
    update = honest(7)
    update["lora_A.query"][0, 0] = math.nan
    return update


MALFORMED = {
    "nan": lambda: reply(7, nan_update()),
    "extra-tensor": lambda: reply(7, {**honest(7), "extra": np.ones(2, dtype=np.float32)}),
    "missing-metric": lambda: reply(
        7, honest(7), metric_values={k: v for k, v in METRICS.items() if k != wire.EPSILON}
    ),
    "no-arrays": lambda: reply(7, None),
    "privacy-record-as-metrics": lambda: reply(
        7, honest(7), extra={wire.RECORD: MetricRecord({"x": 1.0})}
    ),
    "error": lambda: error_reply(7),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("aggregation", ALL)
def test_malformed_replies_are_rejected_under_every_aggregation(
    aggregation: Aggregation, case: str
) -> None:
    chosen = strategy(aggregation, max_update_norm=10.0)
    replies = round_of(None)

    got = aggregate(chosen, [*replies[:2], MALFORMED[case](), *replies[2:]])

    assert [r.node_id for r in chosen.rejected] == [7]
    assert [r.metadata.src_node_id for r in chosen.accepted] == list(HONEST)
    assert distance(got, aggregate(strategy(aggregation), round_of(None))) == 0.0


def test_a_release_is_summed_whatever_the_aggregation_and_bound() -> None:
    """The prototypes release keeps its own sum: no median of statistics, no norm bound."""
    template = prototypes.template(3, 4)
    rng = np.random.default_rng(3)
    releases = [
        {
            prototypes.SUMS: (50 * rng.standard_normal((3, 4))).astype(np.float32),
            prototypes.COUNTS: np.full(3, 40.0 * node, dtype=np.float32),
        }
        for node in (1, 2, 3)
    ]
    chosen = ValidatingStrategy(
        combine=Combine.PROTOTYPES, aggregation=Aggregation.MEDIAN, max_update_norm=1e-3
    )
    chosen.train_messages(1, record(template), ConfigRecord(), [1, 2, 3], ttl_s=60)

    arrays, _ = chosen.aggregate_train(1, [reply(n, r) for n, r in enumerate(releases, start=1)])

    assert chosen.rejected == []
    assert arrays is not None
    noise = float(METRICS[wire.NOISE_MULTIPLIER])
    expected = prototypes.combined(releases, [noise] * len(releases))
    assert {k: v.numpy() for k, v in arrays.items()}.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(arrays[name].numpy(), value)


# ---------------------------------------------------------------------------- job settings

DATA = '[data]\nlabels = ["neg", "pos"]\n'
PRIVACY = "[privacy]\ntarget_epsilon = 8.0\n"
COUNTRIES = ("DE", "FR", "ES", "IT", "AT", "NL", "PL")


def job_text(train: str, countries: int, update: str = "head") -> str:
    nodes = "".join(f'[[nodes]]\ncountry = "{c}"\n' for c in COUNTRIES[:countries])
    return f'{DATA}[train]\nupdate = "{update}"\n{train}\n{PRIVACY}{nodes}'


def write_job(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, *phrases: str) -> str:
    """One line naming the file, one fix, and each phrase."""
    with pytest.raises(ConfigError) as caught:
        load_job(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    assert message.count("; fix: ") == 1, message
    for phrase in phrases:
        assert phrase in message, message
    return message


def test_defaults_are_fedavg_without_a_bound(tmp_path: Path) -> None:
    train = load_job(write_job(tmp_path, job_text("", 3))).train

    assert train.aggregation is Aggregation.FEDAVG
    assert (train.trim_fraction, train.trimmed_share) == (None, DEFAULT_TRIM_FRACTION)
    assert train.max_update_norm is None


def test_robust_settings_load_and_survive_the_trip_to_the_coordinator(tmp_path: Path) -> None:
    """``residency run`` ships the validated job as JSON and the coordinator validates it again."""
    text = job_text(
        'aggregation = "trimmed-mean"\ntrim_fraction = 0.25\nmax_update_norm = 5\nmin_nodes = 4',
        5,
    )
    job = load_job(write_job(tmp_path, text))

    assert (job.train.aggregation, job.train.trim_fraction) == (Aggregation.TRIMMED_MEAN, 0.25)
    assert job.train.max_update_norm == 5.0
    assert Job.model_validate(job.model_dump(mode="json")) == job
    for plain in (job_text("", 3), job_text('aggregation = "median"', 4)):
        job = load_job(write_job(tmp_path / "plain", plain))
        assert Job.model_validate(job.model_dump(mode="json")) == job


@pytest.mark.parametrize(
    ("train", "countries", "field", "phrases"),
    [
        pytest.param(
            'aggregation = "mean"', 3, "train.aggregation", ["'median'"], id="unknown-option"
        ),
        pytest.param(
            'aggregation = "trimmed-mean"\ntrim_fraction = 0.5\nmin_nodes = 3',
            3,
            "train.trim_fraction",
            ["less than 0.5"],
            id="trim-half",
        ),
        pytest.param(
            'aggregation = "trimmed-mean"\ntrim_fraction = 0.0',
            3,
            "train.trim_fraction",
            ["greater than 0"],
            id="trim-zero",
        ),
        pytest.param("max_update_norm = 0.0", 3, "train.max_update_norm", ["greater than 0"]),
        pytest.param("max_update_norm = inf", 3, "train.max_update_norm", ["finite"]),
        pytest.param(
            'max_update_norm = "5"', 3, "train.max_update_norm", ["number"], id="norm-text"
        ),
        pytest.param(
            "trim_fraction = 0.3",
            3,
            "train",
            ['applies to aggregation = "trimmed-mean"', 'fix: aggregation = "trimmed-mean"'],
            id="trim-without-trimmed-mean",
        ),
        pytest.param(
            'aggregation = "median"',
            3,
            "train",
            ["has none", "fix: remove aggregation"],
            id="release-median",
        ),
        pytest.param(
            "max_update_norm = 1.0",
            3,
            "train",
            ["sends none", "fix: remove max_update_norm"],
            id="release-bound",
        ),
    ],
)
def test_bad_robust_settings_fail_in_one_line_with_a_fix(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    train: str,
    countries: int,
    field: str,
    phrases: list[str],
) -> None:
    update = "prototypes" if "release" in request.node.callspec.id else "head"

    message = load_error(write_job(tmp_path, job_text(train, countries, update)), *phrases)

    assert message.startswith(f"{tmp_path / 'job.toml'}: {field}: "), message


@pytest.mark.parametrize(
    ("train", "countries", "phrases", "fixes"),
    [
        pytest.param(
            'aggregation = "median"',
            3,
            ["close with 2 valid updates"],
            ["min_nodes = 3"],
            id="median-majority-of-3",
        ),
        pytest.param(
            'aggregation = "median"\nmin_nodes = 2',
            5,
            ["close with 2 valid updates"],
            ["min_nodes = 3"],
            id="median-min-nodes-2",
        ),
        pytest.param(
            'aggregation = "median"',
            2,
            ["close with 1 valid update:"],  # two countries survive one restart by default
            ['aggregation = "fedavg"'],
            id="median-of-2-countries",
        ),
        pytest.param(
            'aggregation = "trimmed-mean"',
            5,
            ["close with 3 valid updates", "trim_fraction 0.2 drops none"],
            ["min_nodes = 5", "trim_fraction = 0.34", 'aggregation = "median"'],
            id="trimmed-majority-of-5",
        ),
        pytest.param(
            'aggregation = "trimmed-mean"\ntrim_fraction = 0.1\nmin_nodes = 7',
            7,
            ["close with 7 valid updates", "trim_fraction 0.1 drops none"],
            ["trim_fraction = 0.15", 'aggregation = "median" without trim_fraction'],
            id="trimmed-too-fine-for-7",
        ),
    ],
)
def test_a_robust_option_that_one_node_could_outvote_at_the_quorum_is_refused(
    tmp_path: Path, train: str, countries: int, phrases: list[str], fixes: list[str]
) -> None:
    message = load_error(write_job(tmp_path, job_text(train, countries)), *phrases, *fixes)

    assert f'train.aggregation "{train.split(chr(34))[1]}"' in message
    for fix in fixes:  # every fix offered loads
        key, _, value = fix.partition(" = ")
        dropped = {key, "trim_fraction"} if "without trim_fraction" in fix else {key}
        lines = [line for line in train.splitlines() if line.split(" = ")[0] not in dropped]
        value = value.removesuffix(" without trim_fraction")
        fixed = job_text("\n".join([*lines, f"{key} = {value}"]), countries)
        load_job(write_job(tmp_path / "fixed", fixed))


def trimmed(fraction: float, quorum: int) -> TrainSection:
    return TrainSection.model_validate(
        {
            "update": "head",
            "aggregation": "trimmed-mean",
            "trim_fraction": fraction,
            "min_nodes": quorum,
        }
    )


@pytest.mark.parametrize("quorum", range(3, 257))
def test_the_suggested_trim_fraction_trims_one_at_each_end(quorum: int) -> None:
    problem = trimmed(0.001, quorum).robustness_problem(quorum)

    assert problem is not None
    found = re.search(r"trim_fraction = ([0-9.]+) or more", problem)
    assert found is not None, problem
    assert trimmed(float(found.group(1)), quorum).robustness_problem(quorum) is None


def test_the_jobs_options_reach_the_coordinators_strategy(tmp_path: Path) -> None:
    from residency.server.federation import _Federation

    path = write_toy_job(
        tmp_path,
        countries=COUNTRIES[:5],
        train='update = "head"\naggregation = "trimmed-mean"\ntrim_fraction = 0.3\n'
        "max_update_norm = 2.5\nmin_nodes = 4",
    )
    job = load_job(path)

    federation = _Federation(None, job, None, {}, "1", None)  # type: ignore[arg-type]

    aggregator = federation.strategy.aggregator
    assert isinstance(aggregator, FedTrimmedAvg)
    assert aggregator.beta == 0.3
    assert federation.strategy.max_update_norm == 2.5


@pytest.mark.parametrize("noise", [0.0, -1.0, float("nan"), 1e9])
def test_a_release_with_an_unusable_noise_multiplier_turns_the_prior_off(noise: float) -> None:
    """The prior's weight is the coordinator's own choice: a bad report only switches it off."""
    template = prototypes.template(3, 4)
    release = {
        prototypes.SUMS: np.ones((3, 4), dtype=np.float32),
        prototypes.COUNTS: np.full(3, 40.0, dtype=np.float32),
    }
    chosen = ValidatingStrategy(combine=Combine.PROTOTYPES)
    chosen.train_messages(1, record(template), ConfigRecord(), [1, 2], ttl_s=60)
    honest = reply(1, release)
    odd = reply(2, release, metric_values={**METRICS, wire.NOISE_MULTIPLIER: noise})
    arrays, _ = chosen.aggregate_train(1, [honest, odd])
    assert arrays is not None
    if chosen.rejected:  # a negative or NaN multiplier fails the reply's own validation
        assert [r.node_id for r in chosen.rejected] == [2]
    else:
        assert prototypes.NOISE_STDS not in dict(arrays.items())
    both, _ = chosen.aggregate_train(1, [honest, reply(2, release)])
    assert both is not None
    assert prototypes.NOISE_STDS in dict(both.items())
