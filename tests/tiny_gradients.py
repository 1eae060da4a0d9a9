"""The tiny BERT as the DP-SGD references use it: dropout off, logits, one flat gradient.

A batch through Opacus and a loop over single examples (or people) must compute the same
function, so dropout is off; both sides read logits and gradients the same way.
"""

from __future__ import annotations

import torch

from residency.common.config.kinds import UpdateKind
from residency.common.data.encoding import model_inputs
from residency.common.model import ModelSpec, Pooling, build_classifier


def tiny_without_dropout(
    update: UpdateKind, labels: tuple[str, ...], pooling: Pooling = Pooling.CLS
) -> torch.nn.Module:
    """The tiny BERT classifier for ``update``, every dropout at 0."""
    model = build_classifier(
        ModelSpec(source="tiny", labels=labels, update=update, pooling=pooling)
    )
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The model's logits for token rows on the CPU."""
    out: torch.Tensor = model(**model_inputs(ids, mask, device=torch.device("cpu"))).logits
    return out


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    """Every trainable tensor's gradient, flattened into one vector (zeros where unset)."""
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p in model.parameters()
            if p.requires_grad
        ]
    )


def clipped_sum(grads: list[torch.Tensor], clip: float) -> torch.Tensor:
    """The reference for Opacus' flat clipping: each gradient scaled to at most ``clip``, summed.

    The factor is Opacus' own, ``min(1, clip / (norm + 1e-6))``.
    """
    return sum(
        (g * min(1.0, clip / (float(g.norm()) + 1e-6)) for g in grads),
        start=torch.zeros_like(grads[0]),
    )
