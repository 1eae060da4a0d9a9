"""Privacy accounting for DP-SGD, delegated to Opacus' accountants.

Pure functions over an immutable *history*: a tuple of ``(noise_multiplier, sample_rate, steps)``
entries in Opacus' own format. Composition over rounds is the accountant's job: a node keeps
its history and every round appends to it, so epsilon never resets between rounds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
from opacus.accountants import IAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier

from residency.common.config.kinds import AccountantKind

PrivacyStep = tuple[float, float, int]
History = tuple[PrivacyStep, ...]

BUDGET_RTOL = 1e-4
"""Relative slack when an epsilon is compared with the budget it must stay within.

The noise multiplier is chosen so that the whole job's history lands just under its target,
and the last round's projection recomputes that same epsilon: PRV's numerical answer for one
history can differ in the last digits between calls. The slack is far below what one more
round of any real schedule adds, so it can only absorb rounding, never a round.
"""


@contextlib.contextmanager
def _full_batches_allowed() -> Iterator[None]:
    """Silence numpy's divide-by-zero in Opacus' PRV at sample rate 1 (``log(1 - q)``).

    ``np.where`` evaluates both branches; at ``q = 1`` the discarded one takes ``log(0)``. The
    kept branch is exact: PRV then agrees with dp-accounting's PLD on the plain Gaussian
    mechanism (``tests/unit/test_accountant.py``).
    """
    with np.errstate(divide="ignore"):
        yield


def within_budget(epsilon: float, budget: float) -> bool:
    """Whether ``epsilon`` stays within ``budget`` up to :data:`BUDGET_RTOL`."""
    return epsilon <= budget * (1 + BUDGET_RTOL)


def opacus_accountant(kind: AccountantKind, history: Iterable[PrivacyStep]) -> IAccountant:
    """An Opacus accountant preloaded with ``history``."""
    accountant = create_accountant(mechanism=kind.value)
    accountant.history = [(float(z), float(q), int(n)) for z, q, n in history]
    return accountant


def epsilon_spent(history: Iterable[PrivacyStep], *, delta: float, kind: AccountantKind) -> float:
    """Epsilon of the composition of every step in ``history`` at ``delta``; 0 when empty."""
    steps = tuple(history)
    if not steps:
        return 0.0
    with _full_batches_allowed():
        return float(opacus_accountant(kind, steps).get_epsilon(delta=delta))


def noise_for_target(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    kind: AccountantKind,
) -> float:
    """Smallest noise multiplier (Opacus' binary search) whose ``steps`` stay within budget."""
    with _full_batches_allowed():
        noise = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=kind.value,
            epsilon_tolerance=0.01,
        )
    return float(noise)


def noise_after(
    prior: History,
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    kind: AccountantKind,
    tolerance: float = 0.01,
) -> float:
    """Smallest noise multiplier whose ``steps``, composed after ``prior``, stay within budget.

    Opacus' own search (``get_noise_multiplier``: double until under the target, then bisect
    to within ``tolerance`` below it) over the same accountant, with the earlier mechanism in
    the history: a warm start's release and the training after it spend one target together.
    Raises ``ValueError`` when ``prior`` alone already reaches the target.
    """

    def epsilon(noise: float) -> float:
        return epsilon_spent((*prior, (noise, sample_rate, steps)), delta=delta, kind=kind)

    if epsilon_spent(prior, delta=delta, kind=kind) >= target_epsilon - tolerance:
        raise ValueError("The privacy budget is too low.")
    low, high = 0.0, 10.0
    while epsilon(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError("The privacy budget is too low.")
    while target_epsilon - epsilon(high) > tolerance:
        middle = (low + high) / 2
        if epsilon(middle) < target_epsilon:
            high = middle
        else:
            low = middle
    return high


def compose(history: History, step: PrivacyStep) -> History:
    """Append ``step``, merging it into the last entry when the mechanism is the same."""
    z, q, n = step
    if history and history[-1][0] == z and history[-1][1] == q:
        last = history[-1]
        return (*history[:-1], (z, q, last[2] + n))
    return (*history, (z, q, n))


def remaining(path: History, charged: History) -> History:
    """The steps of ``path`` that ``charged`` has not run yet; () once the job left the path.

    ``path`` is a whole job as planned, ``charged`` what it has charged so far. Steps are
    matched by mechanism (noise multiplier and sample rate). A charged mechanism that the path
    does not hold (a refine, which ends its job) means the job took another way: nothing of
    this path is still to come.
    """
    left: dict[tuple[float, float], int] = {}
    for z, q, n in path:
        left[(z, q)] = left.get((z, q), 0) + n
    for z, q, n in charged:
        if (z, q) not in left:
            return ()
        left[(z, q)] -= n
    out: History = ()
    for z, q, n in path:
        due = min(n, left[(z, q)])
        if due > 0:
            out = compose(out, (z, q, due))
            left[(z, q)] -= due
    return out
