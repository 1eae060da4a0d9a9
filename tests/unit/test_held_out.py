"""The coordinator's held-out choice: the split, the kept round, and refining a release."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from residency.common import wire
from residency.common.config.kinds import Combine
from residency.common.updates import prototypes
from residency.server.held_out import (
    RELEASE_MARGIN,
    KeptModel,
    better,
    held_out_rows,
    majority_share,
    refines,
    split_rows,
)
from residency.server.strategy import ValidatingStrategy

pytestmark = pytest.mark.unit

CLASSES, WIDTH = 3, 4


def test_the_held_out_part_is_a_fixed_function_of_each_text() -> None:
    texts = [f"note {i}" for i in range(2000)] + ["note 7"]  # a duplicate of row 7
    held = dict(zip(texts, held_out_rows(texts, 0.5), strict=True))
    shuffled = random.Random(0).sample(texts, len(texts))
    assert dict(zip(shuffled, held_out_rows(shuffled, 0.5), strict=True)) == held
    flags = held_out_rows(texts, 0.5)
    assert flags[7] == flags[-1]  # duplicates land together
    assert 0.45 < sum(flags) / len(flags) < 0.55
    fewer = held_out_rows(texts, 0.2)
    assert all(a or not b for a, b in zip(flags, fewer, strict=True))  # 0.2 within 0.5
    assert not any(held_out_rows(texts, 0.0))
    with pytest.raises(ValueError, match="outside"):
        held_out_rows(texts, 1.0)


def test_nothing_is_held_out_when_a_part_would_be_empty() -> None:
    texts = [f"note {i}" for i in range(20)]
    one_side = next(t for t in texts if held_out_rows([t], 0.5) == [True])
    assert split_rows([one_side], 0.5) == [False]  # a report needs rows to score
    assert split_rows(texts, 0.5) == held_out_rows(texts, 0.5)


def test_a_later_model_is_kept_unless_it_scores_lower() -> None:
    kept = KeptModel(round=2, accuracy=0.9, state={})
    assert better(None, 0.0)
    assert better(kept, 0.91)
    assert better(kept, 0.9)  # a tie goes to the later round
    assert not better(kept, 0.89)


def test_training_that_scores_below_the_release_refines_it() -> None:
    assert refines(0.9, 0.85, majority=0.5, rows=200)
    assert not refines(0.9, 0.9, majority=0.5, rows=200)
    assert not refines(0.9, 0.95, majority=0.5, rows=200)


def test_a_release_no_better_than_a_constant_guess_is_not_refined() -> None:
    """Book reviews per person at epsilon 1: 139 held-out rows, 56% of them one class.

    The standard error of an accuracy there is 0.042, so the release must score above
    0.56 + 2 x 0.042 = 0.644 before a fall after it sends the budget back to it.
    """
    assert not refines(0.633, 0.59, majority=0.56, rows=139)
    assert refines(0.65, 0.59, majority=0.56, rows=139)
    assert refines(0.633, 0.59, majority=0.56, rows=139, margin=-math.inf)  # the rule before
    assert not refines(0.633, 0.59, majority=0.56, rows=139, margin=RELEASE_MARGIN)


def test_a_constant_guess_scores_the_share_of_the_most_frequent_label() -> None:
    assert majority_share([0, 1, 1, 2]) == 0.5
    assert majority_share([3]) == 1.0
    assert majority_share([]) == 0.0


def test_two_releases_combine_by_the_inverse_of_their_noise_variances() -> None:
    one = {prototypes.SUMS: np.full((CLASSES, WIDTH), 1.0, np.float32)}
    two = {prototypes.SUMS: np.full((CLASSES, WIDTH), 2.0, np.float32)}
    merged, noise = prototypes.refined((one, 1.0), (two, 2.0))
    np.testing.assert_allclose(merged[prototypes.SUMS], 0.8 * 1.0 + 0.2 * 2.0, rtol=1e-6)
    assert noise == pytest.approx((1.0 + 0.25) ** -0.5)
    equal, unknown = prototypes.refined((one, None), (two, 2.0))
    np.testing.assert_allclose(equal[prototypes.SUMS], 1.5)
    assert unknown is None


def test_a_refined_release_has_the_noise_of_one_release_spending_both_budgets() -> None:
    """Measured over draws: the combined error's std is (z1^-2 + z2^-2)^-1/2 times C."""
    generator = torch.Generator().manual_seed(0)
    features = prototypes.unit_rows(torch.randn(200, WIDTH, generator=generator))
    labels = torch.randint(0, CLASSES, (200,), generator=generator)
    exact, _ = prototypes.class_statistics(features, labels, CLASSES)
    errors = []
    for _ in range(400):
        first, second = (
            prototypes.release(
                features, labels, classes=CLASSES, noise_multiplier=z, generator=generator
            )
            for z in (1.0, 0.5)
        )
        merged, noise = prototypes.refined((first, 1.0), (second, 0.5))
        errors.append(merged[prototypes.SUMS] - exact.numpy())
    expected = prototypes.noise_std((1.0 + 4.0) ** -0.5)
    assert noise == pytest.approx((1.0 + 4.0) ** -0.5)
    assert np.std(errors) == pytest.approx(expected, rel=0.05)


@pytest.fixture
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages take run and node ids from the process' task identity."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 5)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _release_reply(node: int, value: float, noise: float) -> Message:
    sent = Message(RecordDict(), dst_node_id=node, message_type="train")
    sent.metadata.__dict__["_message_id"] = sent.object_id  # as the SuperLink does
    arrays = {
        prototypes.SUMS: np.full((CLASSES, WIDTH), value, np.float32),
        prototypes.COUNTS: np.full(CLASSES, 10 * value, np.float32),
    }
    metrics = {
        wire.NUM_EXAMPLES: 30,
        wire.STEPS: 1,
        wire.EPSILON: 4.0,
        wire.EPSILON_ROUND: 4.0,
        wire.DELTA: 1e-5,
        wire.NOISE_MULTIPLIER: noise,
        wire.SAMPLE_RATE: 1.0,
        wire.MAX_GRAD_NORM: prototypes.SENSITIVITY,
    }
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            wire.METRICS: MetricRecord(metrics),
            wire.NODE: ConfigRecord({wire.COUNTRY: "DE"}),
        }
    )
    return Message(content, reply_to=sent)


@pytest.mark.usefixtures("_task_identity")
def test_the_strategy_refines_each_nodes_release_and_keeps_those_that_did_not() -> None:
    template = ArrayRecord({k: Array(v) for k, v in prototypes.template(CLASSES, WIDTH).items()})
    strategy = ValidatingStrategy(combine=Combine.PROTOTYPES)
    strategy.train_messages(1, template, ConfigRecord(), [1, 2], ttl_s=60)
    first, _ = strategy.aggregate_train(
        1, [_release_reply(1, 1.0, 1.0), _release_reply(2, 3.0, 1.0)]
    )
    assert first is not None
    np.testing.assert_allclose(first[prototypes.SUMS].numpy(), 4.0)

    strategy.refining = True
    strategy.train_messages(3, template, ConfigRecord(), [1, 2], ttl_s=60)
    again, _ = strategy.aggregate_train(3, [_release_reply(1, 2.0, 0.5)])  # node 2 is gone
    assert again is not None
    node_one = 0.2 * 1.0 + 0.8 * 2.0  # z 1 and 0.5: precisions 1 and 4
    np.testing.assert_allclose(again[prototypes.SUMS].numpy(), node_one + 3.0, rtol=1e-6)
    stds = again[prototypes.NOISE_STDS].numpy()
    np.testing.assert_allclose(
        sorted(stds), sorted([prototypes.noise_std(5**-0.5), prototypes.noise_std(1.0)]), rtol=1e-6
    )
