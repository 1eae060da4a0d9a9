"""Training the classifier head alone on features the frozen encoder computes once per round.

With ``update = "head"`` nothing below the head learns, so running the encoder at every step of
every epoch would recompute the same vectors: the round encodes its data once, in eval mode
(dropout off, so each example's features are a fixed function of its text), and DP-SGD then
runs on the head over those features. Clipping, noise, Poisson sampling and the accountant are
Opacus' as for every other update kind; the per-example gradient of the head is the same
whether its input comes from a cache or from the encoder (``tests/unit/test_linear_probe.py``
checks it against a batch-size-1 loop through the whole model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

from residency.common.data.encoding import model_inputs
from residency.common.device import Compute
from residency.common.head_input import head_features, trained_head

__all__ = ["TrainedPart", "head_features", "trained_head", "trained_part"]


@dataclass(frozen=True)
class TrainedPart:
    """What a round optimises and the rows it reads.

    The whole model on token rows, or (``head_only``) the head alone on its features.
    """

    module: torch.nn.Module
    data: TensorDataset
    head_only: bool

    def logits(
        self, module: torch.nn.Module, inputs: Sequence[torch.Tensor], *, device: torch.device
    ) -> torch.Tensor:
        """Logits of one batch's inputs (its rows less the labels).

        ``module`` is ``self.module`` or Opacus' wrapper of it.
        """
        if self.head_only:
            head_logits: torch.Tensor = module(inputs[0].to(device))
            return head_logits
        model_logits: torch.Tensor = module(**model_inputs(*inputs, device=device)).logits
        return model_logits


def trained_part(model: torch.nn.Module, data: TensorDataset, *, compute: Compute) -> TrainedPart:
    """The part of ``model`` a round trains and its rows: features are computed here, once."""
    head = trained_head(model)
    if head is None:
        return TrainedPart(model, data, head_only=False)
    return TrainedPart(head, head_features(model, head, data, compute=compute), head_only=True)
