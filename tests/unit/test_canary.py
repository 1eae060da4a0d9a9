"""The one-run canary audit: flags a node whose noise is off, passes a correct one."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from pydantic import ValidationError

from residency.auditor.canary import (
    audit_canaries,
    canary_scores,
    canary_training,
    choose_guess_fractions,
    min_canaries,
    run_sizes,
)
from residency.auditor.canary_settings import CanarySettings, Mechanism
from residency.client import trainer
from residency.client.randomness import RoundRandomness
from residency.common.config.kinds import AccountantKind, UpdateKind
from residency.common.privacy import dp_sgd

# The 25,000-canary audit of a whole node round (tens of seconds) is in
# tests/node/test_canary_full_round.py.

# A node's round: 250 steps at q = 1/25 with z = 1 claims epsilon 4.2 (PRV, delta 1e-5).
NOISY = Mechanism(noise_multiplier=1.0, sample_rate=0.04, steps=250)
NOISE_OFF = NOISY.model_copy(update={"noise_multiplier": 0.0})


@pytest.mark.unit
def test_noise_off_while_claiming_the_noisy_budget_is_flagged() -> None:
    claimed = NOISY.opacus_epsilon()
    assert 3 < claimed < 6
    audit = audit_canaries(NOISE_OFF, CanarySettings(canaries=5000, claimed_epsilon=claimed))
    assert audit.flagged
    assert audit.correct == audit.guesses > 4000
    assert audit.epsilon_lower_bound > claimed + 2
    assert audit.claimed_epsilon == claimed
    assert audit.confidence == 0.95
    assert audit.mechanism == NOISE_OFF


@pytest.mark.unit
def test_the_correct_configuration_is_not_flagged() -> None:
    audit = audit_canaries(NOISY, CanarySettings(canaries=5000))
    assert audit.claimed_epsilon == pytest.approx(NOISY.opacus_epsilon())
    assert not audit.flagged
    assert audit.epsilon_lower_bound < audit.claimed_epsilon
    # The attack is not blind: it beats chance on what it guesses.
    assert audit.correct > audit.guesses / 2


@pytest.mark.unit
def test_audit_and_trainer_share_make_private(monkeypatch: pytest.MonkeyPatch) -> None:
    from residency.common.data.encoding import encode
    from residency.common.device import pick_compute
    from residency.common.model import ModelSpec, build_classifier, load_tokenizer

    made: list[dp_sgd.PrivateTraining] = []
    original: Callable[..., dp_sgd.PrivateTraining] = dp_sgd.make_private
    assert trainer.make_private is original  # the trainer's mechanism is the audit's

    def spy(*args: Any, **kwargs: Any) -> dp_sgd.PrivateTraining:
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(dp_sgd, "make_private", spy)
    monkeypatch.setattr(trainer, "make_private", spy)
    audit = audit_canaries(NOISY.model_copy(update={"steps": 5}), CanarySettings(canaries=6000))
    assert len(made) == audit.runs > 1
    for private in made:
        assert isinstance(private.optimizer, DPOptimizer)
        assert private.optimizer.noise_multiplier == NOISY.noise_multiplier
        assert private.loader.sample_rate == NOISY.sample_rate

    model = build_classifier(
        ModelSpec(source="tiny", labels=("pos", "neg"), update=UpdateKind.LORA)
    )
    data = encode(["good", "bad"] * 5, [0, 1] * 5, load_tokenizer("tiny"), max_length=8)
    trainer.train_dp_round(
        model,
        data,
        schedule=trainer.LocalSchedule(epochs=1, batch_size=5, learning_rate=1e-2),
        dp=dp_sgd.DpSgdSettings(
            noise_multiplier=0.7, max_grad_norm=1.0, accountant=AccountantKind.RDP
        ),
        history=(),
        compute=pick_compute(),
        randomness=RoundRandomness.secret(),
        public_records=10,
    )
    assert len(made) == audit.runs + 1
    assert made[-1].optimizer.noise_multiplier == 0.7
    assert made[-1].loader.sample_rate == 0.5


@pytest.mark.unit
def test_canary_training_is_the_nodes_dp_sgd() -> None:
    mechanism = Mechanism(noise_multiplier=1.3, max_grad_norm=0.5, sample_rate=1 / 30, steps=10)
    private = canary_training(
        mechanism,
        canaries=500,
        included=torch.arange(0, 500, 2),
        sampler=torch.Generator().manual_seed(0),
        noise=torch.Generator().manual_seed(1),
    )
    assert isinstance(private.optimizer, DPOptimizer)
    assert isinstance(private.model, GradSampleModule)
    assert private.optimizer.noise_multiplier == 1.3
    assert private.optimizer.max_grad_norm == 0.5
    assert math.isclose(private.loader.sample_rate, 1 / 30)
    assert len(private.loader.dataset) == 250
    assert isinstance(private.optimizer.original_optimizer, torch.optim.SGD)
    assert private.optimizer.original_optimizer.defaults["lr"] == 1.0
    assert private.optimizer.original_optimizer.defaults["momentum"] == 0
    private.model._close()


@pytest.mark.unit
def test_without_noise_a_canary_moves_one_clipped_step_per_sampling() -> None:
    """Slow reference for the Dirac canaries: clipping makes each sampling move exactly C/B.

    At q = 1/100 with ~200 included, about one batch in eight is empty (the noise-only step).
    """
    mechanism = Mechanism(noise_multiplier=0.0, max_grad_norm=3.0, sample_rate=0.01, steps=300)
    inside = np.random.default_rng(0).random(400) < 0.5
    moved = canary_scores(
        mechanism,
        inside,
        sampler=torch.Generator().manual_seed(2),
        noise=torch.Generator().manual_seed(3),
    )
    assert np.all(moved[~inside] == 0)
    expected_batch = int(inside.sum() * mechanism.sample_rate)
    steps_sampled = moved[inside] * expected_batch / mechanism.max_grad_norm
    assert np.allclose(steps_sampled, np.round(steps_sampled), atol=1e-3)
    assert steps_sampled.sum() == pytest.approx(300 * 0.01 * inside.sum(), rel=0.15)


@pytest.mark.unit
def test_same_seed_same_audit_other_seed_other_draws() -> None:
    mechanism = NOISY.model_copy(update={"steps": 40})
    first = audit_canaries(mechanism, CanarySettings(canaries=1000, seed=7))
    again = audit_canaries(mechanism, CanarySettings(canaries=1000, seed=7))
    other = audit_canaries(mechanism, CanarySettings(canaries=1000, seed=8))
    assert first.model_dump(exclude={"elapsed_s"}) == again.model_dump(exclude={"elapsed_s"})
    assert first.included != other.included


@pytest.mark.unit
def test_guessing_rule_fits_the_configuration() -> None:
    sizes = run_sizes(NOISY, 10_000)
    rng = np.random.default_rng(0)
    assert choose_guess_fractions(NOISE_OFF, sizes, confidence=0.95, rng=rng) == (0.95, 0.95)
    noisy_in, noisy_out = choose_guess_fractions(NOISY, sizes, confidence=0.95, rng=rng)
    assert noisy_in <= 0.2
    assert noisy_out <= noisy_in


@pytest.mark.unit
def test_runs_split_the_canaries() -> None:
    sizes = run_sizes(NOISY, 25_000)
    assert sum(sizes) == 25_000
    assert max(sizes) - min(sizes) <= 1
    assert len(sizes) > 1
    assert run_sizes(NOISY, 100) == [100]
    tiny_rate = NOISY.model_copy(update={"sample_rate": 1e-4})
    assert min_canaries(tiny_rate) == 40_000
    with pytest.raises(ValueError, match="Poisson batch"):
        run_sizes(tiny_rate, 25_000)


@pytest.mark.unit
def test_noise_off_without_a_claim_has_nothing_to_check() -> None:
    assert NOISE_OFF.opacus_epsilon() == math.inf
    with pytest.raises(ValueError, match="no finite epsilon"):
        audit_canaries(NOISE_OFF, CanarySettings(canaries=1000))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"noise_multiplier": -0.1}, "noise_multiplier"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"sample_rate": 0.03}, "sample_rate"),
        ({"steps": 0}, "steps"),
        ({"delta": 1.0}, "delta"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"accountant": "gdp"}, "accountant"),
        ({"lr": 0.1}, "lr"),
    ],
)
def test_bad_mechanisms_are_refused(update: dict[str, object], field: str) -> None:
    values: dict[str, object] = {**NOISY.model_dump(), **update}
    with pytest.raises(ValidationError) as caught:
        Mechanism.model_validate(values)
    assert caught.value.errors()[0]["loc"] == (field,)


@pytest.mark.unit
def test_sample_rate_is_stored_as_exactly_one_over_k() -> None:
    assert Mechanism(noise_multiplier=1, sample_rate=0.0303030303, steps=1).sample_rate == 1 / 33
    assert Mechanism(noise_multiplier=1, sample_rate=1.0, steps=1).sample_rate == 1.0


@pytest.mark.unit
@pytest.mark.parametrize(
    "update",
    [
        {"canaries": 99},
        {"confidence": 1.0},
        {"confidence": 0.0},
        {"claimed_epsilon": 0.0},
        {"claimed_epsilon": math.inf},
        {"seed": -1},
    ],
)
def test_bad_settings_are_refused(update: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CanarySettings.model_validate(update)


PEOPLE = Mechanism(noise_multiplier=3.0, sample_rate=0.04, steps=250, records_per_person=5)
"""A round at person level, each canary a person with 5 records (the node's cap); it claims
epsilon 0.83, within what 5,000 canaries can show (the audit's ceiling here is 1.86)."""


@pytest.mark.unit
def test_a_person_level_round_delivers_its_epsilon_per_person() -> None:
    audit = audit_canaries(PEOPLE, CanarySettings(canaries=5000))
    per_record = PEOPLE.model_copy(update={"records_per_person": None})
    assert audit.claimed_epsilon == pytest.approx(per_record.opacus_epsilon())  # ε per person
    assert not audit.flagged
    assert audit.epsilon_lower_bound < audit.claimed_epsilon


@pytest.mark.unit
def test_clipping_each_record_of_a_person_instead_of_the_person_is_flagged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mechanism that forgot to sum a person's rows lets one person move 5 clips, not one."""
    monkeypatch.setattr(dp_sgd, "per_person", lambda samples, owners, people: samples)
    audit = audit_canaries(PEOPLE, CanarySettings(canaries=5000))
    assert audit.flagged
    assert audit.epsilon_lower_bound > audit.claimed_epsilon + 0.4
