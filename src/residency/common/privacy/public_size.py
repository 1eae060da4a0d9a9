"""A node's declared public record count: the one size of its data that may leave it.

Neighbouring datasets differ by adding or removing one record, so the exact record count N
is itself a membership oracle: a node that sent N, or anything computed from it, would tell
anyone comparing two rounds whether a record was added. The operator therefore declares a
rounded size P in ``node.toml`` (``public_records``), and everything observable that once
read N (the Poisson sample rate and step count, the optimizer's expected batch, the ``noise``
step rule, the signed ``examples``, the coordinator's FedAvg weight, the refusals that
compare a size) reads P instead. P is public; how far the data is from it is only
the operator's business (:func:`far_from`, a warning in the node's own log).
"""

from __future__ import annotations

PROPOSED_FIGURES = 2
"""Significant figures of the public size ``residency node init`` and simulation propose."""


def rounded_size(count: int, *, figures: int = PROPOSED_FIGURES) -> int:
    """``count`` rounded to ``figures`` significant figures, at least 1 (1234 -> 1200)."""
    if count < 1 or figures < 1:
        raise ValueError("count and figures must be positive")
    scale: int = 10 ** max(len(str(count)) - figures, 0)
    return max(1, (count + scale // 2) // scale * scale)  # half up, in integers


def far_from(actual: int, public: int) -> bool:
    """Whether the data's real size is outside [P/2, 2P]: worth a warning to the operator.

    Privacy holds at any real size (each record is still sampled at the rate P gives, and
    the accountant charges that rate); utility does not: far below P, batches are mostly
    empty and the update is shrunk; far above, steps are larger than the job planned.
    """
    return actual * 2 < public or actual > 2 * public
