"""One round of Opacus DP-SGD on the tiny BERT, for each update kind."""

from __future__ import annotations

import pytest
import torch

from residency.client.randomness import RoundRandomness
from residency.client.trainer import DpSgdSettings, LocalSchedule, train_dp_round
from residency.common.config.job import AccountantKind, UpdateKind
from residency.common.data.encoding import encode
from residency.common.device import pick_compute
from residency.common.model import ModelSpec, build_classifier, load_tokenizer, trainable_state
from residency.common.privacy.accountant import poisson_schedule

pytestmark = pytest.mark.unit

LABELS = ("pos", "neg")


@pytest.mark.parametrize("update", [UpdateKind.LORA, UpdateKind.HEAD, UpdateKind.FULL])
def test_round_trains_only_trainable_tensors_and_extends_history(update: UpdateKind) -> None:
    model = build_classifier(ModelSpec(source="tiny", labels=LABELS, update=update))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {name: tensor.clone() for name, tensor in trainable_state(model).items()}
    texts = ["good fine"] * 20 + ["bad awful"] * 20
    data = encode(texts, [0] * 20 + [1] * 20, load_tokenizer("tiny"), max_length=8)
    prior = ((0.9, 0.25, 8),)
    outcome = train_dp_round(
        model,
        data,
        schedule=LocalSchedule(epochs=2, batch_size=10, learning_rate=1e-2),
        dp=DpSgdSettings(noise_multiplier=0.9, max_grad_norm=1.0, accountant=AccountantKind.RDP),
        history=prior,
        compute=pick_compute(),
        randomness=RoundRandomness.reproducible(1, server_round=1),
    )
    sample_rate, steps_per_epoch = poisson_schedule(examples=40, batch_size=10)
    assert outcome.steps == 2 * steps_per_epoch
    assert outcome.history == ((0.9, sample_rate, 8 + outcome.steps),)
    after = trainable_state(model)
    assert set(after) == set(before)
    assert all(not torch.equal(before[name], after[name]) for name in before)
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param.detach(), frozen[name]), name
    if update is UpdateKind.FULL:
        assert not frozen
        assert any("word_embeddings" in name for name in after)
    elif update is UpdateKind.HEAD:
        assert set(after) == {"classifier.weight", "classifier.bias"}
    else:
        assert all("lora_" in n or "classifier" in n for n in after)
