"""The frozen encoder's features are computed once per model and data, and standardised fresh."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from residency.common.classifier_head import classifier_head
from residency.common.config.kinds import UpdateKind
from residency.common.device import Compute
from residency.common.head_input import head_features
from residency.common.model import ModelSpec, build_classifier, set_feature_transform

pytestmark = pytest.mark.unit

CPU = Compute(torch.device("cpu"), bf16=False)


def _data(seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (6, 8), generator=generator)
    return TensorDataset(ids, torch.ones_like(ids), torch.arange(6) % 3)


def test_features_are_encoded_once_and_standardised_on_every_read() -> None:
    spec = ModelSpec(
        source="tiny",
        labels=("a", "b", "c"),
        update=UpdateKind.HEAD,
        warm_start=UpdateKind.PROTOTYPES,
    )
    model = build_classifier(spec)
    head = classifier_head(model)
    passes: list[int] = []
    model.bert.register_forward_hook(lambda *_: passes.append(1))
    data = _data(0)
    raw = head_features(model, head, data, compute=CPU).tensors[0]
    again = head_features(model, head, data, compute=CPU).tensors[0]
    assert len(passes) == 1
    torch.testing.assert_close(again, raw)

    centre, scale = torch.full((32,), 0.1), torch.full((32,), 0.5)
    set_feature_transform(model, centre, scale)
    standardised = head_features(model, head, data, compute=CPU).tensors[0]
    assert len(passes) == 1  # the transform is applied to the kept features
    torch.testing.assert_close(standardised, (raw - centre) / scale)
    with torch.no_grad():  # and it is what the whole model's head reads
        logits = model.eval()(input_ids=data.tensors[0], attention_mask=data.tensors[1]).logits
    torch.testing.assert_close(head(standardised), logits, atol=1e-5, rtol=1e-5)

    assert len(passes) == 2  # that whole-model pass
    head_features(model, head, _data(1), compute=CPU)
    assert len(passes) == 3  # other rows are encoded
    other = build_classifier(spec)
    other_passes: list[int] = []
    other.bert.register_forward_hook(lambda *_: other_passes.append(1))
    head_features(other, classifier_head(other), data, compute=CPU)
    assert len(other_passes) == 1  # another model never reads the first one's features
