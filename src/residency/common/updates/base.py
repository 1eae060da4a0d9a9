"""What every update kind declares: what it trains, how it is clipped, sent and combined.

Each kind is one module of this package (PEFT keeps one folder per method for the same
reason): adding a kind is one new module and one line in the registry
(:mod:`residency.common.updates`), not an ``if`` in the model builder, the trainer and the
job's rules. This module holds only the vocabulary, so it imports neither torch nor PEFT.

"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from residency.common.config.job import UpdateKind
from residency.common.privacy.accountant import poisson_schedule

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from residency.common.model import ModelSpec


class GradSampleMode(StrEnum):
    """How each example's gradient is bounded; both clip flat, at the same norm, to the same sum.

    ``hooks`` (Opacus' default) materialises every example's gradient of every trainable
    tensor, then clips and sums: cheap for LoRA's small adapters, but ``batch x vocabulary x
    hidden`` numbers for the word embeddings of full fine-tuning. ``ghost`` (ghost clipping,
    Li et al. 2022) finds each example's gradient norm without materialising the gradient,
    then back-propagates again with each example's loss weighted by its clip factor.

    In float32 both are exact (``tests/unit/test_dp_modes.py``). Under bf16 autocast,
    ``hooks`` still clips the very per-example gradients it sums (in float32), but ``ghost``
    computes the norms and the clipped sum apart, each rounded to bf16: on the tiny BERT an
    example's share of the sum came out up to 0.5% above the clipping norm. A sensitivity above
    the one the accountant assumes is a privacy bug, so ``train_dp_round`` runs ghost clipping
    in float32 even where bf16 autocast is available.
    """

    HOOKS = "hooks"
    GHOST = "ghost"


class Combine(StrEnum):
    """How the coordinator turns the nodes' updates into the next global arrays."""

    FEDAVG = "fedavg"  # the example-weighted mean (weights: the signed example counts)
    PROTOTYPES = "prototypes"  # the sum of the class statistics, then the head from their means


@dataclass(frozen=True)
class UpdateMethod:
    """One update kind, whole.

    Attributes:
        kind: The job's ``[train] update`` value.
        trains: What crosses the border, in words (for docs and errors).
        prepare: Makes the base classifier train (and so send) exactly this kind's tensors.
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
    prepare: Callable[[PreTrainedModel, ModelSpec], torch.nn.Module]
    grad_sample_mode: GradSampleMode
    float16_wire: bool = True
    combine: Combine = Combine.FEDAVG
    release_sensitivity: float | None = None
    normalized_features: bool = False

    def schedule(self, *, examples: int, batch_size: int, local_epochs: int) -> tuple[float, int]:
        """Sample rate and steps of one round, as the accountant charges and the node runs them."""
        if self.release_sensitivity is not None:
            return 1.0, 1
        sample_rate, steps_per_epoch = poisson_schedule(examples=examples, batch_size=batch_size)
        return sample_rate, local_epochs * steps_per_epoch

    def clip_norm(self, max_grad_norm: float) -> float:
        """What the noise is scaled by: the job's clipping norm, or the release's sensitivity."""
        return max_grad_norm if self.release_sensitivity is None else self.release_sensitivity
