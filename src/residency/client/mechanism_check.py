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

from residency.common.errors import ConfigError
from residency.common.privacy.mechanism_log import MechanismLog
from residency.common.privacy.record import MechanismChecks


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
