"""The head-only round: features from the frozen encoder, clipped as the whole model would be."""

from __future__ import annotations

import pytest
import torch
from tiny_gradients import clipped_sum
from torch.utils.data import DataLoader, TensorDataset

from residency.client.linear_probe import head_features, trained_head
from residency.client.trainer import GradSampleMode
from residency.common.config.kinds import AccountantKind, UpdateKind
from residency.common.data.encoding import model_inputs
from residency.common.device import Compute
from residency.common.model import ModelSpec, Pooling, build_classifier
from residency.common.privacy.dp_sgd import DpSgdSettings, make_private

pytestmark = pytest.mark.unit

LABELS = ("a", "b", "c")
CPU = Compute(torch.device("cpu"), bf16=False)


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(11)
    ids = torch.randint(1000, 5000, (9, 12), generator=generator)
    lengths = torch.tensor([12, 3, 7, 10, 5, 2, 9, 6, 4])
    mask = (torch.arange(12).unsqueeze(0) < lengths.unsqueeze(1)).long()
    labels = torch.randint(0, len(LABELS), (9,), generator=generator)
    return TensorDataset(ids * mask, mask, labels)


def _head_model(pooling: Pooling) -> torch.nn.Module:
    return build_classifier(
        ModelSpec(source="tiny", labels=LABELS, update=UpdateKind.HEAD, pooling=pooling)
    )


def test_only_a_head_only_model_has_a_trained_head() -> None:
    for update in UpdateKind:
        model = build_classifier(ModelSpec(source="tiny", labels=LABELS, update=update))
        head = trained_head(model)
        if update in {UpdateKind.HEAD, UpdateKind.PROTOTYPES}:  # the release reads its input
            assert head is model.classifier
        else:
            assert head is None, update


@pytest.mark.parametrize("pooling", [Pooling.CLS, Pooling.MEAN])
def test_features_give_the_models_own_logits_in_eval_mode(pooling: Pooling) -> None:
    model = _head_model(pooling)
    head = trained_head(model)
    assert head is not None
    data = _data()
    features = head_features(model, head, data, compute=CPU)

    model.eval()
    with torch.no_grad():
        logits = model(**model_inputs(*data.tensors[:2], device=CPU.device)).logits
        from_features = head(features.tensors[0])
    assert model.training is False  # left as found
    torch.testing.assert_close(from_features, logits)
    assert torch.equal(features.tensors[1], data.tensors[2])


@pytest.mark.parametrize("pooling", [Pooling.CLS, Pooling.MEAN])
def test_clipped_sum_on_features_matches_the_whole_model_one_example_at_a_time(
    pooling: Pooling,
) -> None:
    model = _head_model(pooling)
    model.eval()  # the features are eval-mode features; the reference must see the same function
    head = trained_head(model)
    assert head is not None
    data = _data()
    reference_grads = []
    for ids, mask, label in zip(*data.tensors, strict=True):
        model.zero_grad(set_to_none=True)
        inputs = model_inputs(ids.unsqueeze(0), mask.unsqueeze(0), device=CPU.device)
        loss = torch.nn.functional.cross_entropy(model(**inputs).logits, label.unsqueeze(0))
        loss.backward()  # type: ignore[no-untyped-call]
        reference_grads.append(torch.cat([p.grad.reshape(-1) for p in head.parameters()]))
    model.zero_grad(set_to_none=True)
    norms = torch.stack([g.norm() for g in reference_grads])
    clip = float(norms.median())
    assert (norms > clip * 1.01).any()
    assert (norms < clip * 0.99).any()
    reference = clipped_sum(reference_grads, clip)

    features = head_features(model, head, data, compute=CPU)
    head.train()  # as train_dp_round leaves it for Opacus; a Linear has no dropout
    private = make_private(
        head,
        torch.optim.SGD(head.parameters(), lr=1.0),
        DataLoader(features, batch_size=3),
        dp=DpSgdSettings(
            noise_multiplier=0.0,
            max_grad_norm=clip,
            accountant=AccountantKind.RDP,
            grad_sample_mode=GradSampleMode.HOOKS,
        ),
        history=(),
    )
    private.backward(private.model(features.tensors[0]), features.tensors[1])
    assert private.optimizer.pre_step()
    got = torch.cat([p.grad.reshape(-1) for p in head.parameters()])
    private.model._close()

    expected = reference / private.optimizer.expected_batch_size
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
