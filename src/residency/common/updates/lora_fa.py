"""``update = "lora-fa"``: LoRA with the down-projections A frozen; B and the head train.

A is seeded alike on every party (and is in the base fingerprint), so only B and the head
cross: half LoRA's bytes, and FedAvg of B alone averages the product exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from residency.common.updates.lora import with_adapters

if TYPE_CHECKING:
    from residency.common.model import ModelSpec


def with_frozen_a(model: PreTrainedModel, spec: ModelSpec) -> torch.nn.Module:
    """LoRA adapters whose A matrices do not train."""
    wrapped = with_adapters(model, spec)
    for name, param in wrapped.named_parameters():
        if ".lora_A." in name:
            param.requires_grad_(False)
    return wrapped
