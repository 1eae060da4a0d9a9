"""Statistics of the one-run privacy audit: p-values and epsilon lower bounds from guesses.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023,
arXiv:2305.08846). Each of ``m`` canaries is included in the training data independently with
probability 1/2; after one run an auditor guesses, from the output alone, "in" or "out" for
``r`` of them (abstaining on the rest) and is right ``v`` times. If the run is
(epsilon, delta)-DP with respect to each canary, ``v`` is stochastically dominated by
Binomial(r, e^epsilon / (1 + e^epsilon)) up to a delta term, so a large ``v`` rejects the
claim. :func:`p_value` is the paper's ``p_value_DP_audit`` (its appendix code), delta term
included; :func:`epsilon_lower_bound` is its ``get_eps_audit``: the largest epsilon rejected.

Google's ``jax_privacy.auditing`` implements the same p-value, but importing it imports JAX;
these few lines are implemented from the paper and checked in the tests against a literal
port of its loop.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

_BISECTION_STEPS = 60


def _check_counts(m: int, r: int, v: int) -> None:
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got m={m}, r={r}, v={v}")


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least ``v`` correct guesses out of ``r`` if the run is (epsilon, delta)-DP.

    Args:
        m: Canaries, each included independently with probability 1/2.
        r: Guesses made (canaries not abstained on).
        v: Correct guesses.
        epsilon: Epsilon of the null hypothesis.
        delta: Delta of the null hypothesis.

    Returns:
        ``P[Binomial(r, q) >= v] + 2 m delta max_i P[v - i <= Binomial(r, q) < v] / i`` with
        ``q = e^epsilon / (1 + e^epsilon)``, capped at 1: the paper's bound for approximate DP.
        For ``delta = 0`` it is the plain binomial tail of its pure-DP theorem.
    """
    _check_counts(m, r, v)
    if epsilon < 0 or math.isnan(epsilon):
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta must be in [0, 1], got {delta}")
    if v == 0:
        return 1.0
    q = float(special.expit(epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))
    if delta == 0:
        return min(beta, 1.0)
    # P[v - i <= B < v] for i = 1..v, summed downwards from v - 1 to keep small tails exact.
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(
    *, m: int, r: int, v: int, delta: float, confidence: float, tolerance: float = 1e-9
) -> float:
    """Largest epsilon that ``v`` correct guesses of ``r`` reject at ``confidence``; 0 if none.

    Bisection as in the paper's ``get_eps_audit``: the returned value is always on the
    rejected side, so it may understate the bound by ``tolerance`` but never overstates it.

    Args:
        m: Canaries, each included independently with probability 1/2.
        r: Guesses made.
        v: Correct guesses.
        delta: Delta the audited run claims.
        confidence: Probability, over the canaries' inclusion and the run's randomness, that
            the bound holds for an (epsilon, delta)-DP run, e.g. 0.95.
        tolerance: Width of the final bisection interval.
    """
    _check_counts(m, r, v)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    significance = 1 - confidence

    def rejected(epsilon: float) -> bool:
        return p_value(m=m, r=r, v=v, epsilon=epsilon, delta=delta) <= significance

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        low, high = high, 2 * high
    for _ in range(_BISECTION_STEPS):
        if high - low <= tolerance:
            break
        middle = (low + high) / 2
        if rejected(middle):
            low = middle
        else:
            high = middle
    return low


def epsilon_ceiling(*, m: int, r: int, delta: float, confidence: float) -> float:
    """The bound ``r`` guesses reach when every one is right: the most such an audit can show."""
    return epsilon_lower_bound(m=m, r=r, v=r, delta=delta, confidence=confidence)
