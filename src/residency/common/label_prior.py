"""Each class's public prior: its name, embedded by the frozen encoder the release reads.

Small federations at tight budgets release class means that are mostly noise. A class's name
is public (it is in the job) and the encoder already maps text to the features a class mean
lives among, so its embedding is a zero-shot guess at the class's direction that costs no
privacy. The release's head counts it as some records of its class, half the release's
noise on a class sum (:func:`residency.common.updates.prototypes.prior_records`): decisive
where a class has a handful of noisy records, nothing without noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from residency.common.data.encoding import encode
from residency.common.device import Compute
from residency.common.head_input import encoder_features
from residency.common.updates.prototypes import unit_rows

NAME_LENGTH = 32
"""Tokens a label name is read to: names are short; a longer description is cut here."""


def label_prior(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    labels: Sequence[str],
    *,
    compute: Compute,
) -> torch.Tensor:
    """One unit-norm feature row per label, in label order (float64)."""
    names = [label.replace("_", " ").replace("-", " ").lower() for label in labels]
    data = encode(names, [0] * len(names), tokenizer, max_length=NAME_LENGTH)
    features = encoder_features(model, data, compute=compute, public=True)
    return unit_rows(features)
