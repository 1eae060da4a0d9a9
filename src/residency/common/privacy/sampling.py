"""Poisson sampling's schedule, as Opacus runs it: what the accountant charges and the node runs.

Pure arithmetic, so the update kinds' traits (and a job's validation) use it without torch.
"""

from __future__ import annotations

import math


def poisson_schedule(*, examples: int, batch_size: int) -> tuple[float, int]:
    """Sample rate and steps per epoch exactly as Opacus' ``DPDataLoader`` derives them.

    Opacus sets ``sample_rate = 1 / len(loader)`` with ``len(loader) = ceil(N / B)``, so the
    expected batch is ``N / ceil(N / B)``, slightly under ``B`` when ``B`` does not divide ``N``.
    """
    if examples < 1 or batch_size < 1:
        raise ValueError("examples and batch_size must be positive")
    sample_rate = 1.0 / math.ceil(examples / batch_size)
    # Opacus' sampler runs int(1 / sample_rate) batches, one short of ceil(N / B) for some
    # sizes (e.g. 93) in floating point; the schedule must count the steps that really run.
    return sample_rate, int(1 / sample_rate)
