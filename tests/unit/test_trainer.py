"""One round of Opacus DP-SGD on the tiny BERT, for each update kind."""

from __future__ import annotations

import pytest
import torch

from residency.client.randomness import RoundRandomness
from residency.client.trainer import LocalSchedule, train_dp_round
from residency.common.config.kinds import AccountantKind, UpdateKind
from residency.common.data.encoding import encode
from residency.common.device import pick_compute
from residency.common.model import ModelSpec, build_classifier, load_tokenizer, trainable_state
from residency.common.privacy.dp_sgd import (
    DpSgdSettings,
    PrivateTraining,
    make_private,
    noise_only_step,
)
from residency.common.privacy.sampling import poisson_schedule

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
        public_records=40,
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


def _noised_once(seed: int) -> tuple[torch.nn.Linear, PrivateTraining]:
    """A zero layer of 20,000 weights after one noise-only DP step from generator ``seed``."""
    linear = torch.nn.Linear(4, 20_000, bias=False)
    torch.nn.init.zeros_(linear.weight)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.zeros(8, 4), torch.zeros(8, dtype=torch.long)),
        batch_size=8,
        generator=torch.Generator().manual_seed(0),
    )
    private = make_private(
        linear,
        torch.optim.SGD(linear.parameters(), lr=1.0),
        loader,
        dp=DpSgdSettings(noise_multiplier=2.0, max_grad_norm=0.5, accountant=AccountantKind.RDP),
        history=(),
        noise_generator=torch.Generator().manual_seed(seed),
    )
    noise_only_step(private.optimizer)
    return linear, private


def test_noise_is_drawn_the_floating_point_safe_way_from_the_nodes_generator() -> None:
    """Opacus' secure-mode Gaussian (4 draws, halved) on our generator, without torchcsprng."""
    linear, private = _noised_once(7)
    assert private.optimizer.secure_mode
    drawn = -linear.weight.detach().flatten() * private.optimizer.expected_batch_size
    # std of the summed noise is noise_multiplier x max_grad_norm = 1.0, whatever the 4 draws
    assert float(drawn.std()) == pytest.approx(1.0, rel=0.03)
    again, _ = _noised_once(7)
    assert torch.equal(again.weight, linear.weight)  # the noise came from the given generator
