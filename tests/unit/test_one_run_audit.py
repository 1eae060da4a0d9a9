"""The one-run audit's p-value and epsilon bound against slow references and closed forms."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from residency.auditor.one_run_audit import epsilon_ceiling, epsilon_lower_bound, p_value

pytestmark = pytest.mark.unit


def binomial_pmf(k: int, r: int, q: float) -> float:
    return math.comb(r, k) * q**k * (1 - q) ** (r - k)


def reference_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The paper's appendix loop, one term at a time, with pmfs from math.comb."""
    q = 1 / (1 + math.exp(-eps))
    beta = sum(binomial_pmf(k, r, q) for k in range(v, r + 1))
    alpha = 0.0
    total = 0.0
    for i in range(1, v + 1):
        total += binomial_pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return min(beta + alpha * delta * 2 * m, 1.0)


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [
        (100, 50, 40, 1.0, 1e-5),
        (100, 50, 50, 3.0, 1e-3),
        (1000, 200, 180, 2.0, 1e-5),
        (1000, 200, 120, 0.5, 1e-4),
        (50, 10, 3, 0.0, 1e-2),
        (500, 80, 80, 6.0, 0.0),
    ],
)
def test_p_value_matches_the_papers_loop(m: int, r: int, v: int, eps: float, delta: float) -> None:
    got = p_value(m=m, r=r, v=v, epsilon=eps, delta=delta)
    assert got == pytest.approx(reference_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


def test_pure_dp_p_value_is_the_exact_binomial_tail() -> None:
    # epsilon = ln 3 makes q = 3/4 exactly: compare with the rational tail P[Bin(12, 3/4) >= 10].
    q = Fraction(3, 4)
    tail = sum(math.comb(12, k) * q**k * (1 - q) ** (12 - k) for k in range(10, 13))
    got = p_value(m=40, r=12, v=10, epsilon=math.log(3), delta=0.0)
    assert got == pytest.approx(float(tail), rel=1e-12)


def test_epsilon_zero_is_a_fair_coin() -> None:
    assert p_value(m=10, r=10, v=10, epsilon=0.0, delta=0.0) == pytest.approx(2**-10)


def test_delta_term_by_hand() -> None:
    # One guess, right: beta = q, alpha = P[B = 0] / 1 = 1 - q, so p = q + (1 - q) 2 m delta.
    q = 1 / (1 + math.exp(-2.0))
    got = p_value(m=1000, r=1, v=1, epsilon=2.0, delta=1e-4)
    assert got == pytest.approx(q + (1 - q) * 2 * 1000 * 1e-4, rel=1e-12)


def test_p_value_is_capped_and_zero_correct_proves_nothing() -> None:
    assert p_value(m=10**6, r=10, v=9, epsilon=0.1, delta=0.5) == 1.0
    assert p_value(m=100, r=10, v=0, epsilon=0.0, delta=0.0) == 1.0
    assert epsilon_lower_bound(m=100, r=10, v=0, delta=1e-5, confidence=0.95) == 0.0


def test_p_value_grows_with_epsilon_and_delta_and_shrinks_with_correct_guesses() -> None:
    grid = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    values = [p_value(m=2000, r=500, v=450, epsilon=e, delta=1e-5) for e in grid]
    assert values == sorted(values)
    assert p_value(m=2000, r=500, v=450, epsilon=2.0, delta=1e-3) > values[4]
    by_v = [p_value(m=2000, r=500, v=v, epsilon=1.0, delta=1e-5) for v in range(300, 501, 25)]
    assert by_v == sorted(by_v, reverse=True)


def test_all_correct_pure_bound_has_a_closed_form() -> None:
    # P[Bin(r, q) >= r] = q^r <= 1 - c  <=>  eps <= log(p / (1 - p)) with p = (1 - c)^(1/r).
    for r, confidence in [(10, 0.95), (1000, 0.95), (20000, 0.99)]:
        p = (1 - confidence) ** (1 / r)
        expected = math.log(p / (1 - p))
        got = epsilon_lower_bound(m=2 * r, r=r, v=r, delta=0.0, confidence=confidence)
        assert got == pytest.approx(expected, abs=1e-6)
        assert got <= expected + 1e-12


def test_bound_is_rejected_and_just_above_it_is_not() -> None:
    m, r, v, delta, confidence = 5000, 1000, 900, 1e-5, 0.95
    bound = epsilon_lower_bound(m=m, r=r, v=v, delta=delta, confidence=confidence)
    assert bound > 0
    assert p_value(m=m, r=r, v=v, epsilon=bound, delta=delta) <= 1 - confidence
    assert p_value(m=m, r=r, v=v, epsilon=bound + 1e-6, delta=delta) > 1 - confidence


def test_bound_orders() -> None:
    def bound(v: int = 900, delta: float = 1e-5, confidence: float = 0.95) -> float:
        return epsilon_lower_bound(m=5000, r=1000, v=v, delta=delta, confidence=confidence)

    assert bound(v=850) < bound(v=900) < bound(v=950)
    assert bound(confidence=0.99) < bound(confidence=0.95) < bound(confidence=0.8)
    assert bound(delta=1e-3) < bound(delta=1e-5) < bound(delta=0.0)
    # Chance-level guessing proves nothing.
    assert bound(v=500) == 0.0


def test_ceiling_what_canaries_can_show() -> None:
    # docs/audit-canary.md: at delta 1e-5 the delta term caps the bound near 8.2; 25,000
    # canaries guessing on 95% can refute a claim of 8, 5,000 cannot.
    assert epsilon_ceiling(m=25_000, r=23_750, delta=1e-5, confidence=0.95) > 8.0
    assert epsilon_ceiling(m=5_000, r=5_000, delta=1e-5, confidence=0.95) < 8.0
    more = epsilon_ceiling(m=100_000, r=100_000, delta=1e-5, confidence=0.95)
    assert more < epsilon_ceiling(m=100_000, r=100_000, delta=0.0, confidence=0.95)
    assert more < 8.3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"m": 10, "r": 11, "v": 5},
        {"m": 10, "r": 5, "v": 6},
        {"m": 10, "r": 5, "v": -1},
    ],
)
def test_counts_are_checked(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="v <= r <= m"):
        p_value(**kwargs, epsilon=1.0, delta=0.0)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5])
def test_confidence_is_checked(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        epsilon_lower_bound(m=10, r=5, v=5, delta=0.0, confidence=confidence)
