"""Each update kind's model code, found by its ``UpdateKind``: what makes a classifier train it.

A kind's traits (what it trains and sends, its clipping mode...) are torch-free, in
:mod:`.traits`; its model code is its own module. Adding a kind: its traits, its module, and
its line below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from residency.common.config.kinds import UpdateKind
from residency.common.updates import full, head, lora, lora_fa

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from residency.common.model import ModelSpec

Prepare = Callable[["PreTrainedModel", "ModelSpec"], "torch.nn.Module"]
"""Makes the base classifier train (and so send) exactly one kind's tensors."""

_PREPARE: dict[UpdateKind, Prepare] = {
    UpdateKind.LORA: lora.with_adapters,
    UpdateKind.LORA_FA: lora_fa.with_frozen_a,
    UpdateKind.HEAD: head.head_only,
    UpdateKind.FULL: full.every_weight,
    # The release sets the head, never trains it; the model reads normalised features.
    UpdateKind.PROTOTYPES: head.head_only,
}


def prepare_for(kind: UpdateKind) -> Prepare:
    """The code that makes a classifier train ``kind``; every ``UpdateKind`` has it."""
    return _PREPARE[kind]
