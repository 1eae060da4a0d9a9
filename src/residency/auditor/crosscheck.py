"""Epsilon from Google's ``dp-accounting``: an implementation independent of Opacus.

Used to check Opacus' numbers on the same recorded parameters (Poisson-subsampled Gaussian
mechanism, self-composed ``steps`` times per history entry), comparing like with like:

* PRV. Opacus' PRV accountant does not return its estimate of epsilon but the top of its
  stated error interval: the estimate at ``delta - delta_error`` plus ``eps_error`` (0.01).
  dp-accounting's privacy-loss distributions give their own interval: the pessimistic
  discretisation bounds the true epsilon from above, the optimistic one from below. The true
  epsilon lies in both intervals, so honest numbers always give overlapping intervals; the
  rule needs no tolerance of its own. (A relative tolerance cannot work: Opacus' margin is
  absolute: 0.01 is 4% of the default release's 0.245 at a target of 1, and 140% of its
  0.007 at 0.1.)
* RDP. Both libraries bound epsilon by the same Renyi curve: dp-accounting is given Opacus'
  orders, so the two minimise over the same grid, and agree within :data:`RDP_RTOL`.
* Either accountant: a recorded epsilon is an upper bound, so it may never be below
  dp-accounting's lower bound on the mechanism's true epsilon. This is the check that catches
  a node whose record understates what its recorded noise spends, with no tolerance at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import dp_accounting
import numpy as np
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant
from opacus.accountants import RDPAccountant

from residency.common.config.kinds import AccountantKind
from residency.common.privacy.accountant import PrivacyStep, epsilon_spent, opacus_accountant

PLD_DISCRETISATION = 1e-4
"""dp-accounting's privacy-loss grid. The optimistic estimate drifts by up to about half an
interval per composition, downwards; the pessimistic one (connect-the-dots) far less, upwards.
The interval was at most 0.002 wide on the default pipelines up to epsilon 16, 0.1 wide for
2,000 steps at sample rate 0.01."""
OPACUS_EPS_ERROR = 0.01
"""``PRVAccountant.get_epsilon``'s default ``eps_error``, which :func:`epsilon_spent` uses."""
RDP_RTOL = 0.01
"""Opacus' and dp-accounting's RDP on the same orders: equal to 1e-15, except where
dp-accounting's series for a fractional order does not converge and it drops that order
(it logs so), which raises its bound: 0.13% at most in
tests/node/test_audit_crosscheck_pipelines.py."""


@dataclass(frozen=True)
class Bounds:
    """An interval that holds the true epsilon when the library that gave it is right."""

    lower: float
    upper: float

    def __str__(self) -> str:
        return f"[{self.lower:.6g}, {self.upper:.6g}]"


def dp_event(history: Iterable[PrivacyStep]) -> dp_accounting.DpEvent:
    """The DP-SGD history as one composed ``DpEvent``."""
    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), n
            )
            for z, q, n in history
        ]
    )


def _pld_epsilon(history: tuple[PrivacyStep, ...], *, delta: float, pessimistic: bool) -> float:
    composed = None
    for z, q, n in history:
        if n == 0:
            continue
        if z == 0:
            return math.inf
        pld = privacy_loss_distribution.from_gaussian_mechanism(
            standard_deviation=z,
            sampling_prob=q,
            pessimistic_estimate=pessimistic,
            value_discretization_interval=PLD_DISCRETISATION,
            # Connect-the-dots is pessimistic only; the optimistic estimate is privacy buckets.
            use_connect_dots=pessimistic,
        ).self_compose(n)
        composed = pld if composed is None else composed.compose(pld)
    return 0.0 if composed is None else float(composed.get_epsilon_for_delta(delta))


def dp_accounting_bounds(history: Iterable[PrivacyStep], *, delta: float) -> Bounds:
    """dp-accounting's interval for the true epsilon: optimistic and pessimistic PLDs."""
    steps = tuple(history)
    return Bounds(
        _pld_epsilon(steps, delta=delta, pessimistic=False),
        _pld_epsilon(steps, delta=delta, pessimistic=True),
    )


def opacus_prv_bounds(history: Iterable[PrivacyStep], *, delta: float) -> Bounds:
    """Opacus' PRV interval for the true epsilon; its upper end is what Opacus reports.

    ``PRVAccountant.get_epsilon`` keeps the lower end to itself; this is its own computation
    (Opacus 1.6 ``_get_dprv`` and ``compute_epsilon``, the version pinned) with its defaults.
    """
    steps = tuple(history)
    if not steps:
        return Bounds(0.0, 0.0)
    delta_error = delta / 1000
    accountant = opacus_accountant(AccountantKind.PRV, steps)
    with np.errstate(divide="ignore"):  # log(1 - q) at q = 1, in a branch np.where discards
        dprv = accountant._get_dprv(eps_error=OPACUS_EPS_ERROR, delta_error=delta_error)
        lower, _, upper = dprv.compute_epsilon(delta, delta_error, OPACUS_EPS_ERROR)
    return Bounds(float(lower), float(upper))


def epsilon_dp_accounting(
    history: Iterable[PrivacyStep], *, delta: float, kind: AccountantKind
) -> float:
    """dp-accounting's upper bound: RDP on Opacus' orders, or the pessimistic PLD for ``prv``."""
    steps = tuple(history)
    if not steps:
        return 0.0
    if kind is AccountantKind.PRV:
        return _pld_epsilon(steps, delta=delta, pessimistic=True)
    accountant = rdp_privacy_accountant.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    accountant.compose(dp_event(steps))
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True)
class CrossCheck:
    """dp-accounting's numbers on one history, beside Opacus' own."""

    kind: AccountantKind
    history: tuple[PrivacyStep, ...]
    delta: float
    epsilon: float
    """dp-accounting's upper bound on epsilon (RDP, or the pessimistic PLD), shown beside
    Opacus'."""
    true_upper: float
    """dp-accounting's upper bound on the mechanism's true epsilon (pessimistic PLD)."""
    opacus: Bounds
    """PRV: Opacus' stated interval; RDP: its bound, twice."""

    @cached_property
    def true_epsilon(self) -> Bounds:
        """dp-accounting's interval for the true epsilon; its lower end is computed on demand.

        Honest figures are upper bounds at or above :attr:`true_upper`, which settles every
        check without the optimistic PLD (as slow again as the pessimistic one).
        """
        lower = _pld_epsilon(self.history, delta=self.delta, pessimistic=False)
        return Bounds(lower, self.true_upper)

    def _below_true(self, value: float) -> bool:
        """Whether ``value`` is below dp-accounting's lower bound on the true epsilon."""
        return value < self.true_upper and value < self.true_epsilon.lower

    def problems(self, recorded: float) -> list[str]:
        """What is wrong with ``recorded`` (the record's epsilon) or between the libraries."""
        found = []
        if self._below_true(recorded):
            found.append(
                f"epsilon {recorded:.6g} recorded, but dp-accounting finds the recorded "
                f"mechanism spends at least {self.true_epsilon.lower:.6g}: the record "
                "understates its privacy loss"
            )
        if self.kind is AccountantKind.PRV:
            if self.opacus.lower > self.true_upper or self._below_true(self.opacus.upper):
                found.append(
                    f"dp-accounting puts epsilon in {self.true_epsilon}, Opacus in "
                    f"{self.opacus}: the libraries disagree beyond their stated error bounds"
                )
        elif not math.isclose(self.epsilon, self.opacus.upper, rel_tol=RDP_RTOL):
            found.append(
                f"dp-accounting gives {self.epsilon:.6g} against Opacus' "
                f"{self.opacus.upper:.6g} on the same RDP orders (tolerance {RDP_RTOL:.0%})"
            )
        return found


def cross_check(
    history: Iterable[PrivacyStep], *, delta: float, kind: AccountantKind
) -> CrossCheck:
    """dp-accounting on ``history``, and the Opacus figures it is held against."""
    steps = tuple(history)
    true_upper = _pld_epsilon(steps, delta=delta, pessimistic=True)
    if kind is AccountantKind.PRV:
        opacus = opacus_prv_bounds(steps, delta=delta)
        return CrossCheck(kind, steps, delta, true_upper, true_upper, opacus)
    bound = epsilon_spent(steps, delta=delta, kind=kind)
    return CrossCheck(
        kind,
        steps,
        delta,
        epsilon_dp_accounting(steps, delta=delta, kind=kind),
        true_upper,
        Bounds(bound, bound),
    )


AGREEMENT: dict[AccountantKind, str] = {
    AccountantKind.PRV: (
        f"error intervals overlap (Opacus ±{OPACUS_EPS_ERROR:g}, PLD grid {PLD_DISCRETISATION:g})"
    ),
    AccountantKind.RDP: f"within {RDP_RTOL:.0%} on Opacus' RDP orders",
}
"""The agreement rule per accountant, in words, for reports. Either way no record may claim
less than dp-accounting's lower bound on its mechanism's true epsilon."""
