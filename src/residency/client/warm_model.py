"""The node's classifier, kept between rounds while its process lives on.

Loading the checkpoint, wrapping it with LoRA and hashing the frozen base costs about a second
for MiniLM-L6 and more for larger models, every round. Flower's simulation keeps each node's
ClientApp process between rounds, so the built model is kept here: every round overwrites all
of its trainable tensors with the received global ones (``load_trainable_state`` requires the
exact set), training never touches the frozen ones, and Opacus' wrapper is removed after each
round, so a kept model trains exactly as a freshly built one would (tested). A deployed node's
fork executor starts each message in a fresh child process, which builds the model anew.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from residency.common.model import ModelSpec, base_fingerprint, build_classifier


@dataclass(frozen=True)
class WarmModel:
    """A built classifier and the fingerprint of its frozen base."""

    model: torch.nn.Module
    fingerprint: str


_lock = threading.Lock()
_kept: dict[ModelSpec, WarmModel] = {}


def classifier_for(spec: ModelSpec) -> WarmModel:
    """The classifier for ``spec``: the kept one if this process built it before.

    Only the latest spec is kept, so a process that serves several jobs holds one model.
    """
    with _lock:
        warm = _kept.get(spec)
        if warm is None:
            model = build_classifier(spec)
            warm = WarmModel(model, base_fingerprint(model))
            _kept.clear()
            _kept[spec] = warm
        return warm


def forget() -> None:
    """Drop the kept model (a failed round may have left it half-loaded)."""
    with _lock:
        _kept.clear()
