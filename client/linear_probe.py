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

from residency.common.classifier_head import classifier_head
from residency.common.data.encoding import model_inputs
from residency.common.device import Compute

FEATURE_BATCH = 256
"""Examples per forward pass of the frozen encoder; memory only, the features do not change."""


def trained_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The classifier head when it is all that trains (``update = "head"``), else None."""
    try:
        head = classifier_head(model)
    except TypeError:
        return None  # PEFT wraps a LoRA model's head
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    return head if trained == {id(p) for p in head.parameters()} else None


def head_features(
    model: torch.nn.Module, head: torch.nn.Linear, data: TensorDataset, *, compute: Compute
) -> TensorDataset:
    """``(features, labels)``: what ``head`` reads for each row of ``(ids, mask, labels)``.

    The features are captured at the head's input, so they are exactly what the model's own
    pooling (mean or [CLS] pooler) feeds it; they are kept in float32 even when the encoder
    ran under bf16 autocast.
    """
    captured: list[torch.Tensor] = []

    def capture(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach().float().cpu())

    hook = head.register_forward_pre_hook(capture)
    was_training = model.training
    model.to(compute.device)
    model.eval()
    ids, mask, labels = data.tensors
    try:
        with torch.no_grad(), compute.autocast():
            for start in range(0, len(labels), FEATURE_BATCH):
                end = start + FEATURE_BATCH
                model(**model_inputs(ids[start:end], mask[start:end], device=compute.device))
    finally:
        hook.remove()
        model.train(was_training)
    width = head.in_features
    features = torch.cat(captured) if captured else torch.zeros((0, width))
    return TensorDataset(features, labels)


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
