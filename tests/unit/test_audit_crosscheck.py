"""The auditor's second opinion: honest ledgers pass at every target, understated ones do not.

The ledgers are what honest nodes sign (``tests/honest_ledgers.py``). Here the checks that take
well under a second: one release, and the two libraries' intervals; every pipeline at every
target is ``tests/node/test_audit_crosscheck_pipelines.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss

from honest_ledgers import CHEAT_TARGETS, assert_an_understated_record_is_flagged
from ledger_factory import DELTA
from residency.auditor.crosscheck import (
    Bounds,
    cross_check,
    dp_accounting_bounds,
    epsilon_dp_accounting,
    opacus_prv_bounds,
)
from residency.common.config.kinds import AccountantKind
from residency.common.privacy.accountant import epsilon_spent, noise_for_target

pytestmark = pytest.mark.filterwarnings(
    "ignore:Optimal order is the largest alpha:UserWarning"  # Opacus' RDP at small epsilon
)


@pytest.mark.unit
@pytest.mark.parametrize(("pipeline", "target"), [("prototypes", t) for t in CHEAT_TARGETS])
def test_a_record_that_understates_its_epsilon_is_flagged_by_dp_accounting_alone(
    tmp_path: Path, pipeline: str, target: float
) -> None:
    """A release's record (one step, well under a second); the longer schedules are node tier."""
    assert_an_understated_record_is_flagged(tmp_path, pipeline, target)


@pytest.mark.unit
@pytest.mark.parametrize("noise", [1.0, 3.5, 14.0, 320.0])
def test_both_intervals_hold_the_exact_epsilon_of_one_gaussian_release(noise: float) -> None:
    """Both libraries' intervals hold the exact epsilon of one Gaussian step at sample rate 1.

    Its delta(epsilon) is exact (dp-accounting's analytic Gaussian mechanism, Balle and Wang
    2018): delta at an interval's lower end must be at least the target delta, and at its upper
    end at most, or the interval misses the exact epsilon.
    """
    history = ((noise, 1.0, 1),)
    exact = GaussianPrivacyLoss(standard_deviation=noise, sensitivity=1.0)
    for bounds in (
        dp_accounting_bounds(history, delta=DELTA),
        opacus_prv_bounds(history, delta=DELTA),
    ):
        assert exact.get_delta_for_epsilon(max(bounds.lower, 0.0)) >= DELTA, bounds
        assert exact.get_delta_for_epsilon(bounds.upper) <= DELTA, bounds


@pytest.mark.unit
def test_opacus_reports_the_top_of_its_interval_and_dp_accounting_the_top_of_its_own() -> None:
    """Why a relative tolerance failed: Opacus reports its estimate plus eps_error (0.01).

    That is 4% of the default release's 0.245 at a target of 1; the estimates themselves agree.
    """
    z = noise_for_target(
        target_epsilon=0.25, delta=DELTA, sample_rate=1.0, steps=1, kind=AccountantKind.PRV
    )
    history = ((z, 1.0, 1),)
    opacus = epsilon_spent(history, delta=DELTA, kind=AccountantKind.PRV)
    assert opacus_prv_bounds(history, delta=DELTA).upper == opacus
    google = epsilon_dp_accounting(history, delta=DELTA, kind=AccountantKind.PRV)
    assert opacus / google - 1 > 0.03  # the old rule's tolerance: an honest release failed
    assert opacus - google == pytest.approx(0.01, abs=1e-3)
    assert cross_check(history, delta=DELTA, kind=AccountantKind.PRV).problems(opacus) == []


@pytest.mark.unit
def test_rdp_is_compared_on_opacus_orders() -> None:
    """On Opacus' orders dp-accounting computes the same RDP bound as Opacus.

    Its default orders reach past Opacus' 63 and give a smaller bound at small epsilon: 45%
    apart for the default release at a target of 0.5.
    """
    kind = AccountantKind.RDP
    z = noise_for_target(target_epsilon=0.125, delta=DELTA, sample_rate=1.0, steps=1, kind=kind)
    history = ((z, 1.0, 1),)
    opacus = epsilon_spent(history, delta=DELTA, kind=kind)
    same_orders = epsilon_dp_accounting(history, delta=DELTA, kind=kind)
    assert same_orders == pytest.approx(opacus, rel=1e-9)
    check = cross_check(history, delta=DELTA, kind=kind)
    assert check.problems(opacus) == []
    assert check.true_epsilon.upper < opacus  # RDP is an upper bound, looser than the PLD


@pytest.mark.unit
def test_libraries_whose_intervals_do_not_overlap_are_reported() -> None:
    """The rule has teeth: an Opacus that over- or under-reports beyond its interval fails."""
    history = ((3.5, 1.0, 1),)
    check = cross_check(history, delta=DELTA, kind=AccountantKind.PRV)
    assert check.problems(check.opacus.upper) == []
    width = check.opacus.upper - check.opacus.lower
    for shift in (width + 0.01, -(width + 0.01)):
        moved = Bounds(check.opacus.lower + shift, check.opacus.upper + shift)
        wrong = replace(check, opacus=moved)
        assert any("disagree beyond their stated error bounds" in p for p in wrong.problems(9.0))
