"""Each update kind is one module: what it trains, its clipping mode, its wire rule."""

from __future__ import annotations

import pytest

from residency.common.config.job import UpdateKind
from residency.common.model import ModelSpec, build_classifier, trainable_state
from residency.common.updates import Combine, GradSampleMode, method_for

pytestmark = pytest.mark.unit


def _sent(kind: UpdateKind) -> set[str]:
    return set(trainable_state(build_classifier(ModelSpec("tiny", ("a", "b"), kind))))


def test_every_kind_the_job_accepts_has_its_module() -> None:
    for kind in UpdateKind:
        method = method_for(kind)
        assert method.kind is kind
        assert method.trains
        assert method.combine is Combine.FEDAVG


def test_each_module_decides_what_trains_and_so_what_crosses() -> None:
    lora, lora_fa, head, full = (_sent(kind) for kind in UpdateKind)
    assert any(".lora_A." in n for n in lora)
    assert any(".lora_B." in n for n in lora)
    assert all(".lora_" in n or "classifier" in n for n in lora)
    assert lora_fa == {n for n in lora if ".lora_A." not in n}
    assert head == {"classifier.weight", "classifier.bias"}
    assert head < full
    assert any("word_embeddings" in n for n in full)


@pytest.mark.parametrize("kind", list(UpdateKind))
def test_clipping_mode_and_wire_rule_come_from_the_module(kind: UpdateKind) -> None:
    method = method_for(kind)
    assert method.grad_sample_mode is (
        GradSampleMode.GHOST if kind is UpdateKind.FULL else GradSampleMode.HOOKS
    )
    assert method.float16_wire is (kind is not UpdateKind.FULL)
