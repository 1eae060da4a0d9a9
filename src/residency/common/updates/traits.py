"""What each update kind is, apart from the code that trains it: torch-free, so configs read it.

Every kind declares here what it trains, how it is clipped, sent and combined; the model code
that makes a classifier train exactly that (``prepare``) is in the kind's own module
(``lora.py``, ``head.py``...), found through :mod:`.registry`. PEFT keeps each method's config
apart from its model code for the same reason: a job is validated, planned and described
without importing torch. Adding a kind: its traits below, its module, one line in the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from residency.common.config.kinds import Combine, GradSampleMode, UpdateKind
from residency.common.privacy.sampling import poisson_schedule

COUNT_WEIGHT = 0.3
"""What one record adds to its class's released count in a prototypes release (its features
add at most 1 in L2); see :mod:`.prototypes`."""

SENSITIVITY = math.sqrt(1.0 + COUNT_WEIGHT**2)
"""L2 distance between the prototypes releases of two datasets one record apart."""


@dataclass(frozen=True)
class UpdateTraits:
    """One update kind's choices, whole.

    Attributes:
        kind: The job's ``[train] update`` value.
        trains: What crosses the border, in words (for docs and errors).
        grad_sample_mode: The faster correct clipping mode, as ``bench/throughput.py``
            measured it; it changes speed and memory, never the mechanism or its accounting.
        float16_wire: Whether float16 transfer is sound: rounding the *weights* (not the
            changes) loses most of a round's update when every weight is sent.
        combine: How the coordinator combines the nodes' updates.
        release_sensitivity: None for DP-SGD (clipped at the job's ``max_grad_norm``, Poisson
            sampled, ``local_epochs`` per round); a number for a one-shot Gaussian release
            of that L2 sensitivity: one step at sample rate 1, whatever the batch settings.
        normalized_features: Whether the head reads the L2-normalised mean of the tokens'
            hidden states (the model is built with mean pooling and normalisation).
    """

    kind: UpdateKind
    trains: str
    grad_sample_mode: GradSampleMode
    float16_wire: bool = True
    combine: Combine = Combine.FEDAVG
    release_sensitivity: float | None = None
    normalized_features: bool = False

    @property
    def is_release(self) -> bool:
        """A one-shot Gaussian release the coordinator sums, not rounds of DP-SGD it averages.

        The one question every layer asks of a kind (one round only, no aggregation choice,
        a warm start, the noise's scale, the progress line's words).
        """
        return self.release_sensitivity is not None

    def schedule(self, *, examples: int, batch_size: int, local_epochs: int) -> tuple[float, int]:
        """Sample rate and steps of one round, as the accountant charges and the node runs them."""
        if self.is_release:
            return 1.0, 1
        sample_rate, steps_per_epoch = poisson_schedule(examples=examples, batch_size=batch_size)
        return sample_rate, local_epochs * steps_per_epoch

    def clip_norm(self, max_grad_norm: float) -> float:
        """What the noise is scaled by: the job's clipping norm, or the release's sensitivity."""
        return max_grad_norm if self.release_sensitivity is None else self.release_sensitivity


_TRAITS = {
    traits.kind: traits
    for traits in (
        # Per-example adapter gradients are small, so Opacus' hooks beat ghost clipping's
        # second backward pass (bench/throughput.py).
        UpdateTraits(
            kind=UpdateKind.LORA,
            trains="LoRA adapters (A and B) and the classifier head",
            grad_sample_mode=GradSampleMode.HOOKS,
        ),
        UpdateTraits(
            kind=UpdateKind.LORA_FA,
            trains="LoRA B matrices and the classifier head (A frozen, seeded alike everywhere)",
            grad_sample_mode=GradSampleMode.HOOKS,
        ),
        UpdateTraits(
            kind=UpdateKind.HEAD,
            trains="the classifier head (weight and bias)",
            grad_sample_mode=GradSampleMode.HOOKS,
        ),
        # The word embeddings' per-example gradients are batch x vocabulary x hidden numbers:
        # ghost clipping beats hooks; float16 would round the weights themselves.
        UpdateTraits(
            kind=UpdateKind.FULL,
            trains="every weight of the classifier",
            grad_sample_mode=GradSampleMode.GHOST,
            float16_wire=False,
        ),
        UpdateTraits(
            kind=UpdateKind.PROTOTYPES,
            trains="nothing: noisy per-class sums and counts of normalised frozen features, once",
            grad_sample_mode=GradSampleMode.HOOKS,  # unused: no gradient is taken
            float16_wire=False,
            combine=Combine.PROTOTYPES,
            release_sensitivity=SENSITIVITY,
            normalized_features=True,
        ),
    )
}


def traits_for(kind: UpdateKind) -> UpdateTraits:
    """What ``kind`` trains, sends and how it is combined; every ``UpdateKind`` has traits."""
    return _TRAITS[kind]
