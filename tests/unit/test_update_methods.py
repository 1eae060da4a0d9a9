"""Each update kind: torch-free traits and one module of model code the registry finds.

The traits say what it trains, its clipping mode and its wire rule.
"""

from __future__ import annotations

import pytest

from residency.common.config.kinds import Combine, GradSampleMode, UpdateKind
from residency.common.model import ModelSpec, build_classifier, trainable_state
from residency.common.updates.registry import prepare_for
from residency.common.updates.traits import traits_for

pytestmark = pytest.mark.unit


def _sent(kind: UpdateKind) -> set[str]:
    return set(trainable_state(build_classifier(ModelSpec("tiny", ("a", "b"), kind))))


def test_every_kind_the_job_accepts_has_its_module() -> None:
    for kind in UpdateKind:
        traits = traits_for(kind)
        assert callable(prepare_for(kind))
        assert traits.kind is kind
        assert traits.trains
        released = kind is UpdateKind.PROTOTYPES
        assert traits.is_release is released
        assert traits.combine is (Combine.PROTOTYPES if released else Combine.FEDAVG)
        assert (traits.release_sensitivity is not None) is released
        assert traits.normalized_features is released


def test_a_release_is_one_step_at_sample_rate_one_and_training_is_poisson() -> None:
    release = traits_for(UpdateKind.PROTOTYPES)
    assert release.schedule(examples=1000, batch_size=32, local_epochs=5) == (1.0, 1)
    assert release.clip_norm(7.0) == release.release_sensitivity
    lora = traits_for(UpdateKind.LORA)
    assert lora.schedule(examples=1000, batch_size=100, local_epochs=5) == (0.1, 50)
    assert lora.clip_norm(7.0) == 7.0


def test_each_module_decides_what_trains_and_so_what_crosses() -> None:
    lora, lora_fa, head, full = (
        _sent(kind)
        for kind in (UpdateKind.LORA, UpdateKind.LORA_FA, UpdateKind.HEAD, UpdateKind.FULL)
    )
    assert any(".lora_A." in n for n in lora)
    assert any(".lora_B." in n for n in lora)
    assert all(".lora_" in n or "classifier" in n for n in lora)
    assert lora_fa == {n for n in lora if ".lora_A." not in n}
    assert head == {"classifier.weight", "classifier.bias"}
    assert head < full
    assert any("word_embeddings" in n for n in full)


@pytest.mark.parametrize("kind", list(UpdateKind))
def test_clipping_mode_and_wire_rule_come_from_the_traits(kind: UpdateKind) -> None:
    method = traits_for(kind)
    assert method.grad_sample_mode is (
        GradSampleMode.GHOST if kind is UpdateKind.FULL else GradSampleMode.HOOKS
    )
    assert method.float16_wire is (kind not in {UpdateKind.FULL, UpdateKind.PROTOTYPES})


def test_a_job_is_read_and_its_kinds_traits_known_without_torch() -> None:
    """The job's config and the traits import no torch: no cycle hides behind a deferred import."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "import residency.common.config.job, residency.common.config.round_plan\n"
        "from residency.common.updates.traits import traits_for\n"
        "from residency.common.config.kinds import UpdateKind\n"
        "assert traits_for(UpdateKind.PROTOTYPES).is_release\n"
        "heavy = ('torch', 'opacus', 'peft', 'transformers')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"
