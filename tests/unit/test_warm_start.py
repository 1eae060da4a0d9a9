"""A job a release warm-starts: config, ε split, node side, standardised head, LoRA after it.

Whole jobs through the node's ClientApp (a release, then the head or LoRA, and a refine) are in
``tests/node/test_warm_start_rounds.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from honest_ledgers import warm_start_release
from node_harness import node_file, signed_record, train_round, update_of
from residency.auditor.crosscheck import cross_check
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.client.trainer import STABLE_STEP, LocalSchedule
from residency.common.classifier_head import classifier_head
from residency.common.config.job import (
    DEFAULT_PIPELINE,
    WARM_STARTED_HEAD,
    WARM_STARTED_LORA,
    TrainSection,
)
from residency.common.config.kinds import AccountantKind, Optimizer, StepRule, UpdateKind
from residency.common.config.round_plan import RoundPlan, feature_transform_bytes, round_config
from residency.common.errors import ConfigError, PolicyViolation
from residency.common.model import (
    ModelSpec,
    build_classifier,
    set_feature_transform,
    trainable_state,
)
from residency.common.privacy.accountant import epsilon_spent, noise_after, noise_for_target
from residency.common.refusal import RefusalCode
from residency.common.updates import prototypes
from toy_federation import WIDTH
from warm_start_job import feature_transform, global_arrays, refine_fields, warm_start_job

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]

LORA_AFTER_RELEASE = 'update = "lora"\nwarm_start = "prototypes"'


@pytest.mark.unit
def test_a_warm_started_head_takes_its_measured_defaults_and_one_more_round() -> None:
    train = TrainSection(update=UpdateKind.HEAD, warm_start=UpdateKind.PROTOTYPES)
    assert train.rounds == WARM_STARTED_HEAD["rounds"]
    assert (train.local_epochs, train.batch_size, train.optimizer) == (10, 65_536, Optimizer.SGD)
    assert train.step_rule is StepRule.NOISE
    assert train.server_rounds == train.rounds + 1
    assert [train.round_update(r) for r in (1, 2, train.server_rounds)] == [
        UpdateKind.PROTOTYPES,
        UpdateKind.HEAD,
        UpdateKind.HEAD,
    ]
    mine = TrainSection(
        update=UpdateKind.HEAD, warm_start=UpdateKind.PROTOTYPES, rounds=2, learning_rate=1.0
    )
    assert (mine.rounds, mine.learning_rate, mine.local_epochs) == (2, 1.0, 10)
    untouched = TrainSection(update=UpdateKind.HEAD)
    assert (untouched.optimizer, untouched.batch_size, untouched.server_rounds) == (
        Optimizer.ADAMW,
        32,
        3,
    )
    assert untouched.step_rule is StepRule.FIXED
    default = TrainSection()
    assert (default.update, default.warm_start) == DEFAULT_PIPELINE


@pytest.mark.unit
@pytest.mark.parametrize(
    "train",
    [
        'update = "full"\nwarm_start = "prototypes"',
        'update = "head"\nwarm_start = "head"',
        'update = "prototypes"\nwarm_start = "prototypes"',
    ],
)
def test_a_pipeline_residency_does_not_run_is_refused_with_its_fix(
    tmp_path: Path, train: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        warm_start_job(tmp_path, train)
    message = str(refused.value)
    assert "\n" not in message
    assert "train" in message
    assert 'fix: warm_start = "prototypes" with update = "head"' in message


@pytest.mark.unit
def test_the_plan_carries_the_feature_transform_exactly_when_the_head_trains_on_it(
    tmp_path: Path,
) -> None:
    job = warm_start_job(tmp_path)
    config = round_config(job, base_fingerprint="0" * 64)
    release = RoundPlan.from_record(config | {"server-round": 1})
    assert (release.round_update, release.centre_and_scale) == (UpdateKind.PROTOTYPES, None)
    training = RoundPlan.from_record(config | {"server-round": 2} | feature_transform())
    assert training.round_update is UpdateKind.HEAD
    assert training.centre_and_scale is not None
    np.testing.assert_array_equal(training.centre_and_scale[1], np.full(WIDTH, 0.2, np.float32))
    with pytest.raises(ConfigError, match="feature transform missing"):
        RoundPlan.from_record(config | {"server-round": 2})
    with pytest.raises(ConfigError, match="sent without a warm start"):
        RoundPlan.from_record(config | {"server-round": 1} | feature_transform())
    bad_scale = feature_transform_bytes(np.zeros(WIDTH), np.zeros(WIDTH))
    with pytest.raises(ConfigError, match="positive"):
        RoundPlan.from_record(config | {"server-round": 2, "feature-transform": bad_scale})
    not_finite = feature_transform_bytes(np.full(WIDTH, np.nan), np.ones(WIDTH))
    with pytest.raises(ConfigError, match="finite"):
        RoundPlan.from_record(config | {"server-round": 2, "feature-transform": not_finite})


@pytest.mark.unit
@pytest.mark.parametrize("kind", list(AccountantKind))
def test_training_after_a_release_spends_exactly_the_rest_of_the_target(
    kind: AccountantKind,
) -> None:
    """The split composes in one account: release, then training noise for the whole target."""
    delta, target = 1e-5, 8.0
    release = warm_start_release(target, delta=delta, kind=kind)
    noise = noise_after(
        (release,), target_epsilon=target, delta=delta, sample_rate=1.0, steps=50, kind=kind
    )
    history = (release, (noise, 1.0, 50))
    spent = epsilon_spent(history, delta=delta, kind=kind)
    assert target - 0.01 <= spent <= target
    assert cross_check(history, delta=delta, kind=kind).problems(spent) == []
    alone = noise_for_target(
        target_epsilon=target * 0.75, delta=delta, sample_rate=1.0, steps=50, kind=kind
    )
    assert noise < alone  # composing, not adding, the two epsilons buys less noise
    with pytest.raises(ValueError, match="too low"):
        noise_after(
            history, target_epsilon=target, delta=delta, sample_rate=1.0, steps=1, kind=kind
        )


@pytest.mark.unit
def test_a_release_asked_for_after_training_began_is_refused_uncharged(tmp_path: Path) -> None:
    """A coordinator replaying round 1 would buy a second release out of training's budget."""
    job = warm_start_job(tmp_path)
    settings = node_file(tmp_path, 20.0)
    train_round(job, settings, run_id=1, server_round=1)
    with pytest.raises(PolicyViolation) as refused:
        train_round(job, settings, run_id=1, server_round=1)
    assert refused.value.refusal.code is RefusalCode.INVALID_PLAN
    assert len(BudgetStore(tmp_path / "state" / STORE_FILE).charges()) == 1


@pytest.mark.unit
def test_a_policy_must_allow_both_the_release_and_the_head(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('name = "head-only"\nallowed_updates = ["head"]\n', encoding="utf-8")
    job = warm_start_job(tmp_path)
    settings = node_file(tmp_path, 20.0, extra=f'policy = "{policy}"\n')
    with pytest.raises(PolicyViolation) as refused:
        train_round(job, settings, run_id=1, server_round=1)
    assert refused.value.refusal.code is RefusalCode.UPDATE_NOT_ALLOWED
    assert "prototypes" in str(refused.value)
    assert BudgetStore(tmp_path / "state" / STORE_FILE).charges() == []


@pytest.mark.unit
def test_the_standardised_head_scores_exactly_as_the_class_mean_head() -> None:
    """Moving the release's head to standardised input changes no logit."""
    spec = ModelSpec(
        source="tiny",
        labels=("a", "b", "c"),
        update=UpdateKind.HEAD,
        warm_start=UpdateKind.PROTOTYPES,
    )
    model = build_classifier(spec).eval()
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, WIDTH, generator=generator)
    bias = torch.randn(3, generator=generator)
    centre = torch.randn(WIDTH, generator=generator) * 0.1
    scale = torch.rand(WIDTH, generator=generator) + 0.05
    ids = torch.randint(5, 100, (4, 7), generator=generator)
    with torch.no_grad():
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(bias)
        before = model(input_ids=ids).logits
        new_weight, new_bias = prototypes.standardized(
            weight, bias, centre.double(), scale.double()
        )
        set_feature_transform(model, centre, scale)
        model.classifier.weight.copy_(new_weight)
        model.classifier.bias.copy_(new_bias)
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    assert model.config.feature_scale == pytest.approx(scale.tolist())
    with pytest.raises(ValueError, match="scale > 0"):
        set_feature_transform(model, centre, -scale)


@pytest.mark.unit
def test_a_feature_transform_of_the_wrong_width_is_refused_before_any_charge(
    tmp_path: Path,
) -> None:
    job = warm_start_job(tmp_path)
    settings = node_file(tmp_path, 20.0)
    train_round(job, settings, run_id=1, server_round=1)
    narrow = {"feature-transform": feature_transform_bytes(np.zeros(8), np.ones(8))}
    with pytest.raises(ValueError, match="32 numbers"):
        train_round(
            job, settings, run_id=1, server_round=2, overrides=narrow, arrays=global_arrays(job)
        )
    assert len(BudgetStore(tmp_path / "state" / STORE_FILE).charges()) == 1


@pytest.mark.unit
def test_the_noise_step_rule_scales_the_rate_by_the_expected_batch_over_the_noise() -> None:
    """Each step then injects the same noise (rate x C per coordinate) at any size and budget."""
    schedule = LocalSchedule(epochs=10, batch_size=65_536, learning_rate=0.032)
    options = {"max_grad_norm": 1.0}
    assert schedule.scaled(StepRule.FIXED, expected_batch=500, noise=4.0, **options) == schedule
    small = schedule.scaled(StepRule.NOISE, expected_batch=100, noise=4.0, **options)
    large = schedule.scaled(StepRule.NOISE, expected_batch=2000, noise=4.0, **options)
    tight = schedule.scaled(StepRule.NOISE, expected_batch=2000, noise=32.0, **options)
    assert small.learning_rate == pytest.approx(0.8)
    assert large.learning_rate == pytest.approx(16.0)
    assert tight.learning_rate == pytest.approx(2.0)
    # The noise a step adds to the head: rate x noise x C / expected batch, the same for all.
    for scaled, (batch, noise) in (
        (small, (100, 4.0)),
        (large, (2000, 4.0)),
        (tight, (2000, 32.0)),
    ):
        assert scaled.learning_rate * noise / batch == pytest.approx(0.032)


@pytest.mark.unit
def test_the_noise_step_rule_stops_growing_where_signal_dominates() -> None:
    """From 2,000 to 20,000 records the step stays at the stable step, not 5 to 10 times it.

    The cap is on the step times the clipping norm: the mean clipped gradient scales with it.
    """
    schedule = LocalSchedule(epochs=10, batch_size=65_536, learning_rate=0.032)
    steps = [
        schedule.scaled(
            StepRule.NOISE, expected_batch=records, noise=4.0, max_grad_norm=1.0
        ).learning_rate
        for records in (2000, 10_000, 20_000)
    ]
    assert steps == pytest.approx([STABLE_STEP] * 3)
    halved = schedule.scaled(StepRule.NOISE, expected_batch=20_000, noise=4.0, max_grad_norm=2.0)
    assert halved.learning_rate == pytest.approx(STABLE_STEP / 2)


@pytest.mark.unit
def test_a_refine_is_only_the_warm_starts_release_after_round_one(tmp_path: Path) -> None:
    job = warm_start_job(tmp_path)
    config = round_config(job, base_fingerprint="0" * 64)
    refine = RoundPlan.from_record(config | {"server-round": 3} | refine_fields())
    assert refine.round_update is UpdateKind.PROTOTYPES
    with pytest.raises(ConfigError, match="refined, after round 1"):
        RoundPlan.from_record(config | {"server-round": 1, "refine": True})
    with pytest.raises(ConfigError, match="refine"):
        RoundPlan.from_record(config | {"server-round": 3} | feature_transform() | {"refine": 1})
    plain = round_config(
        warm_start_job(tmp_path / "plain", 'update = "head"'), base_fingerprint="0" * 64
    )
    with pytest.raises(ConfigError, match="refined, after round 1"):
        RoundPlan.from_record(plain | {"server-round": 3, "refine": True})


@pytest.mark.unit
def test_a_refine_before_any_release_is_refused_and_fixes_no_noise(tmp_path: Path) -> None:
    """Refused before its noise is derived: a noise fixed then would ignore the release."""
    job = warm_start_job(tmp_path)
    settings = node_file(tmp_path, 20.0)
    template = prototypes.template(3, WIDTH)
    with pytest.raises(PolicyViolation) as refused:
        train_round(
            job, settings, run_id=1, server_round=2, overrides=refine_fields(), arrays=template
        )
    assert refused.value.refusal.code is RefusalCode.INVALID_PLAN
    assert BudgetStore(tmp_path / "state" / STORE_FILE).charges() == []

    first = signed_record(train_round(job, settings, run_id=1, server_round=1))
    again = train_round(
        job, settings, run_id=1, server_round=2, overrides=refine_fields(), arrays=template
    )
    refined = signed_record(again)
    assert set(update_of(again)) == {prototypes.SUMS, prototypes.COUNTS}
    expected = noise_after(
        (first.history[0],),
        target_epsilon=8.0,
        delta=1e-4,
        sample_rate=1.0,
        steps=1,
        kind=AccountantKind.PRV,
    )
    assert (refined.noise_multiplier, refined.sample_rate, refined.steps) == (expected, 1.0, 1)
    assert 8.0 - 0.01 <= refined.epsilon <= 8.0


def _statistics(classes: int) -> dict[str, np.ndarray]:
    """Two nodes' releases, combined as the coordinator combines them."""
    generator = np.random.default_rng(0)
    releases = [
        {
            prototypes.SUMS: generator.normal(size=(classes, WIDTH)).astype(np.float32) * 10,
            prototypes.COUNTS: np.full(classes, 20.0, np.float32),
        }
        for _ in range(2)
    ]
    return prototypes.combined(releases)


@pytest.mark.unit
@pytest.mark.parametrize("update", [UpdateKind.LORA, UpdateKind.LORA_FA])
def test_lora_after_a_release_takes_its_measured_defaults(update: UpdateKind) -> None:
    train = TrainSection(update=update, warm_start=UpdateKind.PROTOTYPES)
    assert train.rounds == WARM_STARTED_LORA["rounds"]
    assert (train.batch_size, train.optimizer, train.step_rule) == (
        WARM_STARTED_LORA["batch_size"],
        Optimizer.ADAMW,
        StepRule.FIXED,
    )
    assert train.server_rounds == train.rounds + 1
    assert [train.round_update(r) for r in (1, 2)] == [UpdateKind.PROTOTYPES, update]
    assert train.describe() == f"a prototypes release, then 3 rounds of {update.value} updates"
    mine = TrainSection(update=update, warm_start=UpdateKind.PROTOTYPES, learning_rate=0.01)
    assert (mine.learning_rate, mine.rounds) == (0.01, WARM_STARTED_LORA["rounds"])


@pytest.mark.unit
def test_only_the_release_before_a_head_is_refined_and_only_trained_heads_follow_one(
    tmp_path: Path,
) -> None:
    """A refine rebuilds the head from base features, which LoRA's adapters no longer give."""
    job = warm_start_job(tmp_path, LORA_AFTER_RELEASE)
    config = round_config(job, base_fingerprint="0" * 64)
    plan = RoundPlan.from_record(config | {"server-round": 2} | feature_transform())
    assert plan.round_update is UpdateKind.LORA
    with pytest.raises(ConfigError, match="only the release before a head is refined"):
        RoundPlan.from_record(config | {"server-round": 3, "refine": True} | feature_transform())
    with pytest.raises(ConfigError, match="is not a pipeline Residency runs"):
        RoundPlan.from_record(config | {"server-round": 2, "update": "full"} | feature_transform())


@pytest.mark.unit
def test_a_release_sets_the_head_lora_trains_and_reads() -> None:
    """The release's head in a LoRA model gives the logits it gives the head model."""
    labels = ("a", "b", "c")
    statistics = _statistics(len(labels))
    centre = torch.full((WIDTH,), 0.01)
    scale = torch.rand(WIDTH, generator=torch.Generator().manual_seed(1)) + 0.1
    ids = torch.randint(5, 100, (4, 7), generator=torch.Generator().manual_seed(2))
    logits = []
    for update in (UpdateKind.HEAD, UpdateKind.LORA):
        spec = ModelSpec(
            source="tiny", labels=labels, update=update, warm_start=UpdateKind.PROTOTYPES
        )
        model = build_classifier(spec).eval()
        prototypes.set_head(model, statistics)
        head = classifier_head(model)
        assert head.weight.requires_grad  # the copy that trains and is sent
        weight, bias = prototypes.standardized(
            head.weight.detach(), head.bias.detach(), centre.double(), scale.double()
        )
        set_feature_transform(model, centre, scale)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
            logits.append(model(input_ids=ids).logits)
        sent = trainable_state(model)
        assert any(torch.equal(tensor, head.weight.detach()) for tensor in sent.values())
    torch.testing.assert_close(logits[1], logits[0])
