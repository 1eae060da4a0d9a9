"""``update = "head"``: the classifier head alone, over features the frozen encoder computes.

The encoder runs once per round (``client/linear_probe.py``) and DP-SGD trains the head on
its features: the same mechanism on the same rows, without an encoder pass per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from residency.common.classifier_head import classifier_head

if TYPE_CHECKING:
    from residency.common.model import ModelSpec


def head_only(model: PreTrainedModel, spec: ModelSpec) -> torch.nn.Module:
    """Freeze everything but the output layer."""
    del spec
    head = set(classifier_head(model).parameters())
    for param in model.parameters():
        param.requires_grad_(param in head)
    return model
