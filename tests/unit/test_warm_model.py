"""A classifier kept between rounds trains exactly as one built fresh for the round."""

from __future__ import annotations

import pytest
import torch

from residency.client import warm_model
from residency.client.randomness import RoundRandomness
from residency.client.trainer import GradSampleMode, LocalSchedule, dp_mode_for, train_dp_round
from residency.common.config.kinds import AccountantKind, TransferDtype, UpdateKind
from residency.common.data.encoding import encode
from residency.common.device import pick_compute
from residency.common.model import (
    ModelSpec,
    base_fingerprint,
    build_classifier,
    load_tokenizer,
    load_trainable_state,
    on_the_wire,
    trainable_state,
)
from residency.common.privacy.dp_sgd import DpSgdSettings

pytestmark = pytest.mark.unit

LABELS = ("pos", "neg")


def _round(
    model: torch.nn.Module, update: UpdateKind, server_round: int
) -> dict[str, torch.Tensor]:
    texts = ["good fine", "fine good day", "bad awful", "awful bad night"] * 6
    data = encode(texts, [0, 0, 1, 1] * 6, load_tokenizer("tiny"), max_length=8)
    train_dp_round(
        model,
        data,
        schedule=LocalSchedule(epochs=1, batch_size=6, learning_rate=1e-2),
        dp=DpSgdSettings(
            noise_multiplier=0.5,
            max_grad_norm=1.0,
            accountant=AccountantKind.RDP,
            grad_sample_mode=dp_mode_for(update),
        ),
        history=(),
        compute=pick_compute(),
        randomness=RoundRandomness.reproducible(0, server_round=server_round),
        public_records=24,
    )
    return {name: tensor.clone() for name, tensor in trainable_state(model).items()}


@pytest.mark.parametrize("update", [UpdateKind.LORA, UpdateKind.FULL])
def test_kept_model_trains_like_a_fresh_one(update: UpdateKind) -> None:
    warm_model.forget()
    spec = ModelSpec(source="tiny", labels=LABELS, update=update)
    assert (dp_mode_for(update) is GradSampleMode.GHOST) == (update is UpdateKind.FULL)
    global_arrays = on_the_wire(trainable_state(build_classifier(spec)), TransferDtype.FLOAT32)
    kept = warm_model.classifier_for(spec)
    for server_round in (1, 2, 3):
        load_trainable_state(kept.model, global_arrays)
        from_kept = _round(kept.model, update, server_round)
        fresh = build_classifier(spec)
        load_trainable_state(fresh, global_arrays)
        from_fresh = _round(fresh, update, server_round)
        assert from_kept.keys() == from_fresh.keys()
        for name in from_kept:
            torch.testing.assert_close(from_kept[name], from_fresh[name], rtol=0, atol=0)
        assert warm_model.classifier_for(spec) is kept  # the same object, round after round
        global_arrays = on_the_wire(
            from_kept, TransferDtype.FLOAT32
        )  # next round starts from this update
    assert kept.fingerprint == base_fingerprint(kept.model)


def test_only_the_latest_spec_is_kept_and_forget_drops_it() -> None:
    warm_model.forget()
    lora = ModelSpec(source="tiny", labels=LABELS, update=UpdateKind.LORA)
    full = ModelSpec(source="tiny", labels=LABELS, update=UpdateKind.FULL)
    first = warm_model.classifier_for(lora)
    assert warm_model.classifier_for(full) is not first
    assert warm_model.classifier_for(lora) is not first  # replaced by the full model
    kept = warm_model.classifier_for(lora)
    warm_model.forget()
    assert warm_model.classifier_for(lora) is not kept
