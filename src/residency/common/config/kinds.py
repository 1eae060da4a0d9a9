"""The vocabulary of a job's choices, with no code behind it: a leaf every layer may import.

The job's config, the update kinds' traits and the trainer all name these; keeping them here,
apart from the modules that act on them, leaves no import cycle between the job and the
update kinds (and no torch import in validating a job).
"""

from __future__ import annotations

from enum import StrEnum


class UpdateKind(StrEnum):
    """What a node trains and sends: LoRA adapters plus head, the head alone, or every weight.

    ``prototypes`` trains nothing: each node releases, once, noisy per-class sums and counts of
    its frozen encoder's normalised features, and the coordinator sets the classifier head from
    the noisy class means (one Gaussian release at sample rate 1: the cheapest use of a budget).

    ``lora-fa`` freezes LoRA's A matrices at their seeded random start (LoRA-FA), so only B and
    the head are trained and sent: half the adapter bytes. ``head`` trains only the classifier
    head on the frozen encoder's features (a linear probe): under DP-SGD its few values carry
    far less noise, which on small per-country data beats adapting the encoder
    (docs/performance.md).
    """

    LORA = "lora"
    LORA_FA = "lora-fa"
    HEAD = "head"
    FULL = "full"
    PROTOTYPES = "prototypes"


class Optimizer(StrEnum):
    """The local optimiser DP-SGD's noisy gradients drive (Opacus wraps either).

    ``sgd`` takes plain steps of the noisy mean gradient: with full batches on standardised
    features it is what measured best for the head after a release (docs/performance.md).
    ``adamw`` rescales every coordinate by its own noisy second moment, started fresh each
    round.
    """

    ADAMW = "adamw"
    SGD = "sgd"


class StepRule(StrEnum):
    """How a node turns ``learning_rate`` into its optimiser's step size.

    ``fixed``: the learning rate as written. ``noise``: ``learning_rate`` times the expected
    batch over the noise multiplier, so every step carries the same amount of injected noise
    (``learning_rate`` times the clipping norm per coordinate) whatever the node's record
    count and budget: full-batch DP-GD divides the noisy sum by the record count, so a fixed
    rate is too large for small nodes and tight budgets and too small for large ones
    (docs/performance.md). The count and the multiplier are public in the signed record.
    """

    FIXED = "fixed"
    NOISE = "noise"


class TransferDtype(StrEnum):
    """Precision of the arrays on the wire (both ways); training and averaging stay float32."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"


class AccountantKind(StrEnum):
    """Opacus accountant used for the node's epsilon (PRV is tighter, RDP the classic bound)."""

    PRV = "prv"
    RDP = "rdp"


class Aggregation(StrEnum):
    """How the coordinator combines a training round's valid updates: Flower's own strategies.

    ``fedavg``: the mean weighted by each node's signed example count (``FedAvg``).
    ``trimmed-mean``: per coordinate, the ``trim_fraction`` highest and lowest values are
    dropped and the rest averaged (``FedTrimmedAvg``). ``median``: the per-coordinate median
    (``FedMedian``). The two robust options are unweighted, as Flower's are: a country of 100
    records counts as much as one of 10,000. A prototypes release is always summed.
    """

    FEDAVG = "fedavg"
    TRIMMED_MEAN = "trimmed-mean"
    MEDIAN = "median"


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
