"""The classifier's output layer: what ``update = "head"`` trains and the probe reads."""

from __future__ import annotations

import torch
from peft.utils import ModulesToSaveWrapper


def classifier_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The output layer, from the pooled sentence vector to the logits (``update = "head"``).

    Under LoRA, PEFT wraps the head in a ``ModulesToSaveWrapper`` whose active copy is the one
    that trains, is sent and is read by the forward pass: a release sets that copy, so a
    release can start LoRA as it starts the head.
    """
    head = getattr(model, "classifier", None)
    if isinstance(head, ModulesToSaveWrapper):  # the module PEFT's own forward reads
        active = head.active_adapters
        head = head.modules_to_save[active[0]] if active else head.original_module
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{type(model).__name__} has no linear classifier head")
    return head
