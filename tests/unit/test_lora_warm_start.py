"""LoRA started by a release: the job's defaults, the plan's rules, the head, the node's spend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from node_harness import node_file, signed_record, train_round, update_of
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.common.classifier_head import classifier_head
from residency.common.config.job import (
    WARM_STARTED_LORA,
    Job,
    Optimizer,
    StepRule,
    TrainSection,
    UpdateKind,
    load_job,
)
from residency.common.config.round_plan import RoundPlan, feature_transform_bytes, round_config
from residency.common.errors import ConfigError
from residency.common.model import (
    ModelSpec,
    build_classifier,
    set_feature_transform,
    trainable_state,
)
from residency.common.privacy.accountant import poisson_schedule
from residency.common.updates import prototypes
from toy_federation import write_toy_job

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]

EXAMPLES = 60
WIDTH = 32  # the tiny BERT's hidden size
LORA_AFTER_RELEASE = 'update = "lora"\nwarm_start = "prototypes"'


def _job(tmp_path: Path, train: str = LORA_AFTER_RELEASE) -> Job:
    path = write_toy_job(
        tmp_path / "job", countries=("DE",), examples=EXAMPLES, schedule=False, train=train
    )
    return load_job(path)


def _transform() -> dict[str, bytes]:
    centre = np.full(WIDTH, 0.01, np.float32)
    scale = np.full(WIDTH, 0.2, np.float32)
    return {"feature-transform": feature_transform_bytes(centre, scale)}


def _statistics(classes: int) -> dict[str, np.ndarray]:
    """Two nodes' releases, combined as the coordinator combines them."""
    generator = np.random.default_rng(0)
    releases = [
        {
            prototypes.SUMS: generator.normal(size=(classes, WIDTH)).astype(np.float32) * 10,
            prototypes.COUNTS: np.full(classes, 20.0, np.float32),
        }
        for _ in range(2)
    ]
    return prototypes.combined(releases)


@pytest.mark.unit
@pytest.mark.parametrize("update", [UpdateKind.LORA, UpdateKind.LORA_FA])
def test_lora_after_a_release_takes_its_measured_defaults(update: UpdateKind) -> None:
    train = TrainSection(update=update, warm_start=UpdateKind.PROTOTYPES)
    assert train.rounds == WARM_STARTED_LORA["rounds"]
    assert (train.batch_size, train.optimizer, train.step_rule) == (
        WARM_STARTED_LORA["batch_size"],
        Optimizer.ADAMW,
        StepRule.FIXED,
    )
    assert train.server_rounds == train.rounds + 1
    assert [train.round_update(r) for r in (1, 2)] == [UpdateKind.PROTOTYPES, update]
    assert train.describe() == f"a prototypes release, then 3 rounds of {update.value} updates"
    mine = TrainSection(update=update, warm_start=UpdateKind.PROTOTYPES, learning_rate=0.01)
    assert (mine.learning_rate, mine.rounds) == (0.01, WARM_STARTED_LORA["rounds"])


@pytest.mark.unit
def test_only_the_release_before_a_head_is_refined_and_only_trained_heads_follow_one(
    tmp_path: Path,
) -> None:
    """A refine rebuilds the head from base features, which LoRA's adapters no longer give."""
    job = _job(tmp_path)
    config = round_config(job, base_fingerprint="0" * 64)
    plan = RoundPlan.from_record(config | {"server-round": 2} | _transform())
    assert plan.round_update is UpdateKind.LORA
    with pytest.raises(ConfigError, match="only the release before a head is refined"):
        RoundPlan.from_record(config | {"server-round": 3, "refine": True} | _transform())
    with pytest.raises(ConfigError, match="does not start a full update"):
        RoundPlan.from_record(config | {"server-round": 2, "update": "full"} | _transform())


@pytest.mark.unit
def test_a_release_sets_the_head_lora_trains_and_reads() -> None:
    """The release's head in a LoRA model gives the logits it gives the head model."""
    labels = ("a", "b", "c")
    statistics = _statistics(len(labels))
    centre = torch.full((WIDTH,), 0.01)
    scale = torch.rand(WIDTH, generator=torch.Generator().manual_seed(1)) + 0.1
    ids = torch.randint(5, 100, (4, 7), generator=torch.Generator().manual_seed(2))
    logits = []
    for update in (UpdateKind.HEAD, UpdateKind.LORA):
        spec = ModelSpec(
            source="tiny", labels=labels, update=update, warm_start=UpdateKind.PROTOTYPES
        )
        model = build_classifier(spec).eval()
        prototypes.set_head(model, statistics)
        head = classifier_head(model)
        assert head.weight.requires_grad  # the copy that trains and is sent
        weight, bias = prototypes.standardized(
            head.weight.detach(), head.bias.detach(), centre.double(), scale.double()
        )
        set_feature_transform(model, centre, scale)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
            logits.append(model(input_ids=ids).logits)
        sent = trainable_state(model)
        assert any(torch.equal(tensor, head.weight.detach()) for tensor in sent.values())
    torch.testing.assert_close(logits[1], logits[0])


@pytest.mark.node
@pytest.mark.parametrize("update", ["lora", "lora-fa"])
def test_a_node_releases_then_fine_tunes_within_one_target(tmp_path: Path, update: str) -> None:
    job = _job(tmp_path, f'update = "{update}"\nwarm_start = "prototypes"')
    settings = node_file(tmp_path, 20.0)
    first = train_round(job, settings, run_id=1, server_round=1)
    assert set(update_of(first)) == {prototypes.SUMS, prototypes.COUNTS}
    release = signed_record(first)
    assert (release.sample_rate, release.steps) == (1.0, 1)

    model = build_classifier(ModelSpec.from_job(job))
    arrays = {name: t.numpy() for name, t in trainable_state(model).items()}
    records = [release]
    for server_round in range(2, job.train.server_rounds + 1):
        reply = train_round(
            job,
            settings,
            run_id=1,
            server_round=server_round,
            overrides=_transform(),
            arrays=arrays,
        )
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        sent = update_of(reply)
        assert set(sent) == set(arrays)
        changed = [n for n in sent if "lora_B" in n and np.abs(sent[n]).max() > 0]
        assert changed  # the encoder's adapters trained, not the head alone
        records.append(signed_record(reply))
    last = records[-1]
    sample_rate, steps = poisson_schedule(examples=EXAMPLES, batch_size=job.train.batch_size)
    assert (last.sample_rate, last.steps) == (sample_rate, steps)
    assert last.history[0] == (release.noise_multiplier, 1.0, 1)
    assert 7.99 - 0.01 <= last.epsilon <= 8.0
    assert len(BudgetStore(tmp_path / "state" / STORE_FILE).charges()) == job.train.server_rounds
