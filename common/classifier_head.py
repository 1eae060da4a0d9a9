"""The classifier's output layer: what ``update = "head"`` trains and the probe reads."""

from __future__ import annotations

import torch


def classifier_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The output layer, from the pooled sentence vector to the logits (``update = "head"``)."""
    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{type(model).__name__} has no linear classifier head")
    return head
