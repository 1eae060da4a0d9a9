"""The classifier's output layer: what ``update = "head"`` trains and the probe reads."""

from __future__ import annotations

import torch


def classifier_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The output layer, from the pooled sentence vector to the logits (``update = "head"``).

    Under LoRA, PEFT wraps the head in a ``ModulesToSaveWrapper`` whose active copy is the one
    that trains, is sent and is read by the forward pass: a release sets that copy, so a
    release can start LoRA as it starts the head.
    """
    head = getattr(model, "classifier", None)
    copies = getattr(head, "modules_to_save", None)
    if isinstance(copies, torch.nn.ModuleDict):
        active = getattr(head, "active_adapters", None) or ["default"]
        head = dict(copies.items()).get(active[0])
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{type(model).__name__} has no linear classifier head")
    return head
