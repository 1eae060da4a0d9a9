"""The node's own evidence that DP ran this round, checked before anything leaves.

Opacus, PEFT and torch can change under the node (opacus issue 820: with some PEFT releases
Opacus' hooks stopped registering on LoRA layers, silently): a tensor trained without
per-example gradients, a step without clipping or with other noise would still be signed
with the planned epsilon. So the trainer tallies, as it runs (:class:`MechanismLog`), what
the mechanism did at each step, and :func:`checked` turns the tally into the
:class:`~residency.common.privacy.record.MechanismChecks` the record signs, or raises: a
round that fails its check sends nothing, and its charge stands (it was spent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from residency.common.errors import ConfigError
from residency.common.privacy.record import MechanismChecks

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


def checked(
    log: MechanismLog, *, steps: int, noise_multiplier: float, max_grad_norm: float
) -> MechanismChecks:
    """The checks to sign, or ``ConfigError`` naming the first that failed.

    ``steps``, ``noise_multiplier`` and ``max_grad_norm`` are what the round charged and
    will sign; the noise must be exactly their product, as Opacus computes it.
    """
    expected = noise_multiplier * max_grad_norm
    failed = []
    if log.steps != steps:
        failed.append(f"{log.steps} noisy steps, {steps} charged")
    if log.clipped_batches != log.batches:
        failed.append(
            f"{log.batches - log.clipped_batches} of {log.batches} batches without a "
            "per-example gradient for every trainable tensor or over the clipping bound"
        )
    if log.noise_stds != ({expected} if log.steps else set()):
        failed.append(f"noise std {sorted(log.noise_stds)[:3]}, not {expected:g}")
    if log.unnoised_tensors:
        failed.append(f"{log.unnoised_tensors} tensor-steps without a noisy gradient")
    if failed:
        raise ConfigError(
            f"the DP mechanism failed its own check ({'; '.join(failed)}): nothing was sent; "
            "fix: install the Opacus, PEFT and torch versions Residency pins"
        )
    return MechanismChecks(
        steps=log.steps,
        batches=log.batches,
        clipped_batches=log.clipped_batches,
        noise_std=expected,
    )
