"""What the DP mechanism did in a round, tallied step by step as it runs.

The trainer and the canary audit's DP-SGD (:mod:`.dp_sgd`) fill it; the node turns it into
the checks its record signs (``client/mechanism_check.py``), so a step that was not clipped
or noised as planned is caught before anything leaves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

CLIP_RTOL = 1e-4
"""Rounding allowed on the clipped sum's bound ``rows x C`` (float32 sums of many rows)."""


@dataclass
class MechanismLog:
    """What the DP mechanism did in one round, step by step (filled by the trainer)."""

    steps: int = 0
    batches: int = 0
    clipped_batches: int = 0
    noise_stds: set[float] = field(default_factory=set)
    unnoised_tensors: int = 0
    rows: int = 0  # the batch being back-propagated

    def batch(self, rows: int) -> None:
        """A non-empty batch of ``rows`` examples is about to be back-propagated."""
        self.batches += 1
        self.rows = rows

    def empty_batch(self) -> None:
        """An empty Poisson batch: nothing to clip, a zero sum; counted like any other batch.

        Counting only non-empty batches would sign how many of the round's batches the
        sampler left empty, a function of the record count that no accountant charges.
        """
        self.batches += 1
        self.clipped_batches += 1

    def clipped(self, per_example: list[int], clipped_sum: float, max_grad_norm: float) -> None:
        """Count the batch as clipped if every tensor had ``rows`` examples and the sum is bounded.

        ``per_example`` holds, per trainable tensor, how many per-example gradients (or norms)
        it had; ``clipped_sum`` is the L2 norm of the clipped sum over every tensor.
        """
        complete = bool(per_example) and all(n == self.rows for n in per_example)
        bound = self.rows * max_grad_norm * (1 + CLIP_RTOL)
        if complete and math.isfinite(clipped_sum) and clipped_sum <= bound:
            self.clipped_batches += 1

    def noised(self, std: float, params: list[torch.Tensor]) -> None:
        """A step added noise of ``std`` to ``params``' gradients."""
        self.steps += 1
        self.noise_stds.add(float(std))
        self.unnoised_tensors += sum(p.grad is None for p in params)
