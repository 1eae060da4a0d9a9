"""``update = "head"``: the classifier head alone, over features the frozen encoder computes.

The encoder runs once per round (``client/linear_probe.py``) and DP-SGD trains the head on
its features: the same mechanism on the same rows, without an encoder pass per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from residency.common.classifier_head import classifier_head
from residency.common.config.kinds import UpdateKind
from residency.common.updates.base import UpdateMethod
from residency.common.updates.traits import traits_for

if TYPE_CHECKING:
    from residency.common.model import ModelSpec


def head_only(model: PreTrainedModel, spec: ModelSpec) -> torch.nn.Module:
    """Freeze everything but the output layer."""
    del spec
    head = set(classifier_head(model).parameters())
    for param in model.parameters():
        param.requires_grad_(param in head)
    return model


METHOD = UpdateMethod(traits_for(UpdateKind.HEAD), head_only)
