"""What the classifier head reads: the frozen encoder's features, computed once per model and data.

With ``update = "head"`` (and for a release) nothing below the head learns, so running the
encoder again every round, and at every evaluation, recomputes the same vectors. The encoder
runs in eval mode (dropout off), so each row's features are a fixed function of its tokens;
they are kept per (model object, data) and, when the model standardises its head's input
(a warm-started head), standardised again on every read, so a changed transform never reads
stale features.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict

import torch
from torch.utils.data import TensorDataset

from residency.common.classifier_head import classifier_head
from residency.common.data.encoding import model_inputs
from residency.common.device import Compute

FEATURE_BATCH = 256
"""Examples per forward pass of the frozen encoder; memory only, the features do not change."""
KEPT = 8
"""Feature sets kept in memory (a node's data and a coordinator's test set are a few MB each)."""

_kept: OrderedDict[tuple[int, str], tuple[weakref.ref[torch.nn.Module], torch.Tensor]] = (
    OrderedDict()
)


def trained_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The classifier head when it is all that trains (``update = "head"``), else None."""
    try:
        head = classifier_head(model)
    except TypeError:
        return None  # a model with no linear head
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    return head if trained == {id(p) for p in head.parameters()} else None


def _digest(data: TensorDataset) -> str:
    digest = hashlib.sha256()
    for tensor in data.tensors[:2]:
        digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _reader(model: torch.nn.Module) -> torch.nn.Module:
    """The module fed the encoder's features: the standardiser if the model has one, or the head."""
    standardizer = getattr(model, "standardizer", None)
    return standardizer if isinstance(standardizer, torch.nn.Module) else classifier_head(model)


def encoder_features(
    model: torch.nn.Module, data: TensorDataset, *, compute: Compute, public: bool = False
) -> torch.Tensor:
    """The pooled features of each row before any standardisation, in float32 (kept).

    ``public``: the rows are public (the coordinator's test set, the feature scale's random
    texts), so each batch may be trimmed to its longest row; private rows are run at full
    width, so no pass takes longer because one record is long
    (:func:`residency.common.data.encoding.model_inputs`).
    """
    reads = _reader(model)
    key = (id(model), _digest(data) + ("/public" if public else ""))
    kept = _kept.get(key)
    if kept is not None and kept[0]() is model:
        _kept.move_to_end(key)
        return kept[1]
    captured: list[torch.Tensor] = []

    def capture(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach().float().cpu())

    hook = reads.register_forward_pre_hook(capture)
    was_training = model.training
    model.to(compute.device)
    model.eval()
    ids, mask = data.tensors[0], data.tensors[1]
    try:
        with torch.no_grad(), compute.autocast():
            for start in range(0, len(ids), FEATURE_BATCH):
                end = start + FEATURE_BATCH
                model(
                    **model_inputs(
                        ids[start:end], mask[start:end], device=compute.device, trim_padding=public
                    )
                )
    finally:
        hook.remove()
        model.train(was_training)
    width = classifier_head(model).in_features
    features = torch.cat(captured) if captured else torch.zeros((0, width))
    _kept[key] = (weakref.ref(model), features)
    while len(_kept) > KEPT:
        _kept.popitem(last=False)
    return features


def head_features(
    model: torch.nn.Module,
    head: torch.nn.Linear,
    data: TensorDataset,
    *,
    compute: Compute,
    public: bool = False,
) -> TensorDataset:
    """``(features, labels)``: what ``head`` reads for each row of ``(ids, mask, labels)``.

    The features are exactly what the model's own pooling (mean or [CLS] pooler, then its
    standardisation if set) feeds the head; they are kept in float32 even when the encoder
    ran under bf16 autocast. Only for a model whose encoder is frozen: the features are
    kept per model object.
    """
    features = encoder_features(model, data, compute=compute, public=public)
    reads = _reader(model)
    if reads is not head:
        with torch.no_grad():
            features = reads(features)
    return TensorDataset(features, data.tensors[-1])
