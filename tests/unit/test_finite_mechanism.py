"""No number the coordinator chooses turns one record into a non-finite update (issue 24.1).

The reproduced attack: a coordinator that knows the data less one candidate record picks a
feature dimension where the candidate stands out and a transform or head weight that makes
exactly that record's logits overflow. Unguarded, the update is finite without the candidate
and NaN with it: a membership oracle whatever epsilon the record says. Now the plan is
refused before any charge when its numbers leave the documented bounds (refused the same
whatever the data), and within them, or fed such numbers directly, the mechanism is finite.
The attacks through whole node rounds are in ``tests/node/test_finite_mechanism_rounds.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from finite_mechanism_attack import FLT_MAX, candidate_job, transform_of
from residency.client.linear_probe import head_features
from residency.client.randomness import RoundRandomness
from residency.client.trainer import LocalSchedule, dp_mode_for, train_dp_round
from residency.common.config.job import MAX_GRAD_NORM, MAX_LORA_ALPHA
from residency.common.config.kinds import AccountantKind, UpdateKind
from residency.common.config.round_plan import (
    FEATURE_CENTRE_BOUND,
    FEATURE_SCALE_FLOOR,
    RoundPlan,
    round_config,
)
from residency.common.data.encoding import encode
from residency.common.device import Compute
from residency.common.errors import ConfigError
from residency.common.model import (
    WEIGHT_BOUND,
    ModelSpec,
    build_classifier,
    check_weight_bound,
    load_tokenizer,
    trainable_state,
)
from residency.common.privacy.dp_sgd import DpSgdSettings
from residency.common.updates import prototypes
from toy_federation import WIDTH
from warm_start_job import WARM

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


@pytest.mark.unit
def test_received_weights_must_be_finite_and_within_the_bound() -> None:
    check_weight_bound({"w": np.full((2, 2), WEIGHT_BOUND, np.float32), "e": np.zeros(0)})
    with pytest.raises(ValueError, match="exceeds"):
        check_weight_bound({"w": np.array([0.0, -WEIGHT_BOUND * 1.01], np.float32)})
    with pytest.raises(ValueError, match="not finite"):
        check_weight_bound({"w": np.array([0.0, np.nan], np.float32)})
    with pytest.raises(ValueError, match="not finite"):
        check_weight_bound({"w": np.array([np.inf], np.float16)})


@pytest.mark.unit
def test_the_feature_transform_must_keep_its_scale_floor_and_centre_bound(tmp_path: Path) -> None:
    job = candidate_job(tmp_path, WARM)
    config = round_config(job, base_fingerprint="0" * 64) | {"server-round": 2}
    centre, scale = np.zeros(WIDTH), np.full(WIDTH, FEATURE_SCALE_FLOOR)
    centre[0], centre[1] = -FEATURE_CENTRE_BOUND, FEATURE_CENTRE_BOUND
    assert RoundPlan.from_record(config | transform_of(centre, scale)).centre_and_scale is not None
    low = scale.copy()
    low[5] = np.nextafter(np.float32(FEATURE_SCALE_FLOOR), np.float32(0))
    with pytest.raises(ConfigError, match="below the floor"):
        RoundPlan.from_record(config | transform_of(centre, low))
    far = centre.copy()
    far[5] = np.nextafter(np.float32(FEATURE_CENTRE_BOUND), np.float32(2))
    with pytest.raises(ConfigError, match="centre outside"):
        RoundPlan.from_record(config | transform_of(far, scale))
    with pytest.raises(ConfigError, match="lora-alpha"):
        RoundPlan.from_record(config | transform_of(centre, scale) | {"lora-alpha": 10**30})


@pytest.mark.unit
@pytest.mark.parametrize("update", [UpdateKind.FULL, UpdateKind.LORA])
@pytest.mark.parametrize("signs", ["all-plus", "random"])
def test_every_trainable_weight_at_the_bound_still_trains_to_a_finite_update(
    update: UpdateKind, signs: str
) -> None:
    """The most a coordinator may send, in every trainable tensor, in the node's own mode.

    Full fine-tuning runs ghost clipping, whose finiteness needs a finite forward pass
    (``common/model.py::WEIGHT_BOUND``); LoRA runs hooks.
    """
    spec = ModelSpec(
        source="tiny", labels=("pos", "neg", "obj"), update=update, lora_alpha=MAX_LORA_ALPHA
    )
    model = build_classifier(spec)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                flip = torch.rand(param.shape, generator=generator) < 0.5
                sign = torch.where(flip, -1.0, 1.0) if signs == "random" else 1.0
                param.copy_(sign * torch.full_like(param, WEIGHT_BOUND))
    texts = [f"{w} {v} {u}" for w in ("good", "bad", "table", "sad") for v in "abcd" for u in "xy"]
    data = encode(texts, [i % 3 for i in range(len(texts))], load_tokenizer("tiny"), max_length=8)
    train_dp_round(
        model,
        data,
        schedule=LocalSchedule(epochs=1, batch_size=8, learning_rate=10.0),
        dp=DpSgdSettings(
            noise_multiplier=1.0,
            max_grad_norm=MAX_GRAD_NORM,
            accountant=AccountantKind.RDP,
            grad_sample_mode=dp_mode_for(update),
        ),
        history=(),
        public_records=len(data),
        compute=Compute(torch.device("cpu"), bf16=False),
        randomness=RoundRandomness.reproducible(3, server_round=1),
    )
    assert all(bool(t.isfinite().all()) for t in trainable_state(model).values())


def _standing_out(features: torch.Tensor) -> tuple[int, int, float]:
    """``(row, dimension, threshold)``: a row above every other row in one dimension."""
    top2 = features.topk(2, dim=0).values
    gaps = torch.where(top2[0] > 0, top2[0] - top2[1].clamp_min(0), torch.zeros_like(top2[0]))
    dimension = int(gaps.argmax())
    row = int(features[:, dimension].argmax())
    threshold = float((top2[0, dimension] + top2[1, dimension].clamp_min(0)) / 2)
    return row, dimension, threshold


@pytest.mark.unit
def test_head_weights_that_overflow_one_records_logits_still_give_a_finite_update() -> None:
    """Attack (c), in the mechanism itself: the bounds bypassed, the weights fed directly.

    The coordinator picks the dimension where the candidate stands out and sets the head so
    that only the candidate's logit overflows (``b + w x > FLT_MAX`` for it alone). Its
    gradient is then NaN; it counts as zero, so the update is finite with it and without it.
    """
    spec = ModelSpec(source="tiny", labels=("pos", "neg", "obj"), update=UpdateKind.HEAD)
    texts = [f"{w} {v} {u}" for w in ("good", "bad", "table", "sad") for v in "abcd" for u in "xy"]
    pool = encode(texts, [i % 3 for i in range(len(texts))], load_tokenizer("tiny"), max_length=8)
    compute = Compute(torch.device("cpu"), bf16=False)
    probe = build_classifier(spec)
    features = head_features(probe, probe.classifier, pool, compute=compute).tensors[0]
    candidate, dimension, threshold = _standing_out(features)
    assert threshold > 0
    updates = {}
    for name, rows in (
        ("without", [i for i in range(len(texts)) if i != candidate]),
        ("with", list(range(len(texts)))),
    ):
        model = build_classifier(spec)
        with torch.no_grad():
            model.classifier.weight[0, dimension] = FLT_MAX
            model.classifier.bias[0] = FLT_MAX * (1 - threshold)
        data = torch.utils.data.TensorDataset(*(t[rows] for t in pool.tensors))
        train_dp_round(
            model,
            data,
            schedule=LocalSchedule(epochs=1, batch_size=len(rows), learning_rate=0.1),
            dp=DpSgdSettings(
                noise_multiplier=1.0, max_grad_norm=1.0, accountant=AccountantKind.RDP
            ),
            history=(),
            public_records=len(data),
            compute=compute,
            randomness=RoundRandomness.reproducible(3, server_round=1),
        )
        updates[name] = trainable_state(model)
    for update in updates.values():
        assert all(bool(t.isfinite().all()) for t in update.values())
    assert {k: v.shape for k, v in updates["with"].items()} == {
        k: v.shape for k, v in updates["without"].items()
    }


@pytest.mark.unit
def test_a_release_with_a_nan_feature_row_is_the_release_with_a_zero_row() -> None:
    """Attack (e): a non-finite row counts as a zero row, still counted in its class."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(6, 5, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    poisoned, zeroed = features.clone(), features.clone()
    poisoned[2, 1], poisoned[4, 3] = float("nan"), float("inf")
    zeroed[2], zeroed[4] = 0.0, 0.0

    def released(rows: torch.Tensor) -> dict[str, np.ndarray]:
        return prototypes.release(
            rows,
            labels,
            classes=3,
            noise_multiplier=1.0,
            generator=torch.Generator().manual_seed(9),
        )

    got, expected = released(poisoned), released(zeroed)
    assert set(got) == set(expected)
    for name, value in got.items():
        assert np.isfinite(value).all()
        np.testing.assert_array_equal(value, expected[name])
    _, counts = prototypes.class_statistics(poisoned, labels, 3)
    assert counts.tolist() == [2.0, 2.0, 2.0]
