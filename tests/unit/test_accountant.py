"""Privacy accounting: Opacus reference values, composition, and an independent cross-check."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader, TensorDataset

from residency.auditor.crosscheck import epsilon_dp_accounting
from residency.common.config.kinds import AccountantKind
from residency.common.privacy.accountant import (
    History,
    compose,
    epsilon_spent,
    noise_for_target,
    remaining,
)
from residency.common.privacy.sampling import poisson_schedule

pytestmark = [
    pytest.mark.unit,
    # Opacus' RDP warns when the optimal order is the largest alpha; irrelevant here.
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]

DELTA = 1e-5
KINDS = list(AccountantKind)

# Histories for the cross-check, single and multi-entry (noise, sample rate, steps).
HISTORIES: dict[str, History] = {
    "notes-reference": ((1.0, 0.01, 1000),),
    "opacus-reference": ((1.5, 0.04, 2250),),
    "three-mechanisms": ((1.0, 0.01, 300), (1.3, 0.02, 200), (0.9, 0.005, 500)),
    "two-rounds-new-noise": ((2.0, 0.05, 100), (0.8, 0.05, 100)),
}
# dp-accounting's RDP is given Opacus' order grid: the bounds agree tightly. PRV (Opacus,
# which adds its eps_error of 0.01) and PLD (dp-accounting) approximate the same tight curve;
# at these epsilons (above 1) within a few percent. The auditor's rule is in crosscheck.py.
CROSSCHECK_RTOL = {AccountantKind.RDP: 0.01, AccountantKind.PRV: 0.03}


def test_opacus_rdp_reference_value() -> None:
    epsilon = epsilon_spent(((1.5, 0.04, 2250),), delta=DELTA, kind=AccountantKind.RDP)

    assert epsilon == pytest.approx(7.32911117143, abs=1e-6)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [(AccountantKind.PRV, 1.838), (AccountantKind.RDP, 2.101)],
)
def test_reference_values_from_notes(kind: AccountantKind, expected: float) -> None:
    epsilon = epsilon_spent(((1.0, 0.01, 1000),), delta=DELTA, kind=kind)

    assert epsilon == pytest.approx(expected, abs=1e-3)


def test_prv_is_tighter_than_rdp() -> None:
    history = ((1.0, 0.01, 1000),)

    prv = epsilon_spent(history, delta=DELTA, kind=AccountantKind.PRV)
    rdp = epsilon_spent(history, delta=DELTA, kind=AccountantKind.RDP)

    assert prv < rdp


@pytest.mark.parametrize("kind", KINDS)
def test_empty_history_spends_nothing(kind: AccountantKind) -> None:
    assert epsilon_spent((), delta=DELTA, kind=kind) == 0.0
    assert epsilon_spent(iter(()), delta=DELTA, kind=kind) == 0.0
    assert epsilon_dp_accounting((), delta=DELTA, kind=kind) == 0.0


def test_epsilon_grows_with_steps() -> None:
    epsilons = [
        epsilon_spent(((1.0, 0.01, steps),), delta=DELTA, kind=AccountantKind.RDP)
        for steps in (10, 100, 1000)
    ]

    assert epsilons == sorted(epsilons)
    assert len(set(epsilons)) == 3


def test_compose_merges_repeats_of_one_mechanism() -> None:
    history: History = ()
    for _ in range(10):
        history = compose(history, (1.0, 0.01, 200))

    assert history == ((1.0, 0.01, 2000),)


def test_compose_keeps_different_mechanisms_apart_and_in_order() -> None:
    first = compose((), (1.0, 0.01, 100))
    second = compose(first, (1.2, 0.01, 50))
    third = compose(second, (1.2, 0.02, 50))
    fourth = compose(third, (1.2, 0.02, 25))

    assert first == ((1.0, 0.01, 100),)
    assert second == ((1.0, 0.01, 100), (1.2, 0.01, 50))
    assert third == ((1.0, 0.01, 100), (1.2, 0.01, 50), (1.2, 0.02, 50))
    assert fourth == ((1.0, 0.01, 100), (1.2, 0.01, 50), (1.2, 0.02, 75))


def test_compose_does_not_merge_with_an_earlier_entry() -> None:
    history = compose(compose(((1.0, 0.01, 100),), (2.0, 0.01, 10)), (1.0, 0.01, 100))

    assert history == ((1.0, 0.01, 100), (2.0, 0.01, 10), (1.0, 0.01, 100))


@pytest.mark.parametrize("kind", KINDS)
def test_ten_rounds_of_200_steps_equal_2000_steps(kind: AccountantKind) -> None:
    merged: History = ()
    for _ in range(10):
        merged = compose(merged, (1.0, 0.01, 200))
    unmerged = ((1.0, 0.01, 200),) * 10

    straight = epsilon_spent(((1.0, 0.01, 2000),), delta=DELTA, kind=kind)
    one_round = epsilon_spent(((1.0, 0.01, 200),), delta=DELTA, kind=kind)

    assert epsilon_spent(merged, delta=DELTA, kind=kind) == straight
    assert epsilon_spent(unmerged, delta=DELTA, kind=kind) == pytest.approx(straight, rel=1e-3)
    # Resetting the accountant every round would under-report by far.
    assert one_round < straight / 2
    if kind is AccountantKind.PRV:
        assert straight == pytest.approx(2.594, abs=1e-3)


def test_compose_returns_a_new_history() -> None:
    history: History = ((1.0, 0.01, 100),)

    composed = compose(history, (1.0, 0.01, 100))

    assert history == ((1.0, 0.01, 100),)
    assert composed is not history


@pytest.mark.parametrize(
    ("kind", "target", "sample_rate", "steps"),
    [
        (AccountantKind.RDP, 3.0, 0.02, 500),
        (AccountantKind.RDP, 8.0, 0.1, 300),
        (AccountantKind.PRV, 3.0, 0.02, 500),
    ],
)
def test_noise_for_target_stays_just_within_budget(
    kind: AccountantKind, target: float, sample_rate: float, steps: int
) -> None:
    noise = noise_for_target(
        target_epsilon=target, delta=DELTA, sample_rate=sample_rate, steps=steps, kind=kind
    )

    epsilon = epsilon_spent(((noise, sample_rate, steps),), delta=DELTA, kind=kind)

    assert noise > 0
    assert epsilon <= target
    assert epsilon >= target - 0.02


@pytest.mark.parametrize(
    ("examples", "batch_size"),
    [
        (50, 8),
        (400, 32),
        (7, 10),
        (1, 1),
        (10, 10),
        (64, 32),
        (1000, 1),
        # ceil(N / B) = 93, and int(1 / (1 / 93)) == 92 in floating point: Opacus' sampler then
        # yields 92 batches per epoch, not 93.
        pytest.param(930, 10, id="ceil-93"),
        pytest.param(2976, 32, id="ceil-93-b32"),
    ],
)
def test_poisson_schedule_matches_opacus_dp_data_loader(examples: int, batch_size: int) -> None:
    loader = DataLoader(TensorDataset(torch.arange(examples)), batch_size=batch_size)
    dp_loader = DPDataLoader.from_data_loader(loader)

    sample_rate, steps = poisson_schedule(examples=examples, batch_size=batch_size)

    assert sample_rate == dp_loader.sample_rate
    assert steps == len(dp_loader)


def test_poisson_schedule_expected_batch_is_at_most_batch_size() -> None:
    sample_rate, steps = poisson_schedule(examples=50, batch_size=8)

    assert 50 * sample_rate <= 8
    assert steps == math.ceil(50 / 8)


@pytest.mark.parametrize(("examples", "batch_size"), [(0, 8), (8, 0), (-1, 8)])
def test_poisson_schedule_rejects_non_positive(examples: int, batch_size: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        poisson_schedule(examples=examples, batch_size=batch_size)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(HISTORIES))
def test_dp_accounting_agrees_with_opacus(kind: AccountantKind, name: str) -> None:
    history = HISTORIES[name]

    opacus = epsilon_spent(history, delta=DELTA, kind=kind)
    google = epsilon_dp_accounting(history, delta=DELTA, kind=kind)

    assert opacus > 0
    assert google == pytest.approx(opacus, rel=CROSSCHECK_RTOL[kind])


def test_what_remains_of_a_planned_job_is_its_steps_not_yet_charged() -> None:
    release, training, refine = (2.0, 1.0, 1), (1.5, 0.1, 30), (3.0, 1.0, 1)
    path = (release, training)
    assert remaining(path, ()) == path
    assert remaining(path, (release,)) == (training,)
    assert remaining(path, (release, (1.5, 0.1, 10))) == ((1.5, 0.1, 20),)
    assert remaining(path, path) == ()
    assert remaining(path, (release, (1.5, 0.1, 10), refine)) == ()  # it left the path
