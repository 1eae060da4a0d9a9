"""A job a release warm-starts, round after round through the node: one target for all.

A node releases first, then trains the head or fine-tunes LoRA within the job's one target, and
a refine after training spends exactly what the job has left: whole rounds through the ClientApp
(seconds each). The config, the split of ε and each round on its own are checked in
``tests/unit/test_warm_start.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message

from node_harness import node_file, signed_record, train_round, update_of
from residency.auditor.crosscheck import cross_check
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.common.config.job import WARM_START_SHARE, Job
from residency.common.config.kinds import AccountantKind
from residency.common.errors import BudgetExceeded
from residency.common.privacy.accountant import noise_after, noise_for_target
from residency.common.privacy.sampling import poisson_schedule
from residency.common.refusal import RefusalCode
from residency.common.updates import prototypes
from toy_federation import WIDTH
from warm_start_job import EXAMPLES, feature_transform, global_arrays, refine_fields, warm_start_job

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


def _training_rounds(job: Job, settings: Path) -> list[Message]:
    """Rounds 2 on of a warm-started job on one node, each sent the fresh global arrays."""
    replies = []
    for server_round in range(2, job.train.server_rounds + 1):
        reply = train_round(
            job,
            settings,
            run_id=1,
            server_round=server_round,
            overrides=feature_transform(),
            arrays=global_arrays(job),
        )
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        replies.append(reply)
    return replies


@pytest.mark.node
def test_a_node_releases_first_then_trains_the_head_within_one_target(tmp_path: Path) -> None:
    job = warm_start_job(tmp_path)
    settings = node_file(tmp_path, 20.0)
    first = train_round(job, settings, run_id=1, server_round=1)
    assert set(update_of(first)) == {prototypes.SUMS, prototypes.COUNTS}
    release = signed_record(first)
    expected = noise_for_target(
        target_epsilon=8.0 * WARM_START_SHARE,
        delta=1e-4,
        sample_rate=1.0,
        steps=1,
        kind=AccountantKind.PRV,
    )
    assert (release.noise_multiplier, release.sample_rate, release.steps) == (expected, 1.0, 1)
    assert release.max_grad_norm == prototypes.SENSITIVITY
    assert release.epsilon <= 8.0 * WARM_START_SHARE

    records = [release]
    for reply in _training_rounds(job, settings):
        assert set(update_of(reply)) == {"classifier.weight", "classifier.bias"}
        records.append(signed_record(reply))
    last = records[-1]
    assert (last.sample_rate, last.steps, last.max_grad_norm) == (1.0, 10, 1.0)
    assert last.history[0] == (expected, 1.0, 1)
    assert 7.99 - 0.01 <= last.epsilon <= 8.0
    charges = BudgetStore(tmp_path / "state" / STORE_FILE).charges()
    assert len(charges) == job.train.server_rounds


@pytest.mark.node
def test_a_refine_after_training_spends_exactly_what_the_job_has_left(tmp_path: Path) -> None:
    """Release, one training round, the release again: the target, and nothing after it."""
    job = warm_start_job(tmp_path)
    settings = node_file(tmp_path, 20.0)
    train_round(job, settings, run_id=1, server_round=1)
    trained = train_round(
        job,
        settings,
        run_id=1,
        server_round=2,
        overrides=feature_transform(),
        arrays=global_arrays(job),
    )
    history = signed_record(trained).history
    template = prototypes.template(3, WIDTH)
    refined = signed_record(
        train_round(
            job, settings, run_id=1, server_round=3, overrides=refine_fields(), arrays=template
        )
    )
    assert refined.max_grad_norm == prototypes.SENSITIVITY
    assert refined.noise_multiplier == noise_after(
        history, target_epsilon=8.0, delta=1e-4, sample_rate=1.0, steps=1, kind=AccountantKind.PRV
    )
    assert 8.0 - 0.01 <= refined.epsilon <= 8.0
    assert (
        cross_check(refined.history, delta=1e-4, kind=AccountantKind.PRV).problems(refined.epsilon)
        == []
    )
    for overrides, arrays in (
        (feature_transform(), global_arrays(job)),
        (refine_fields(), template),
    ):
        with pytest.raises(BudgetExceeded) as refused:
            train_round(job, settings, run_id=1, server_round=4, overrides=overrides, arrays=arrays)
        assert refused.value.refusal.code is RefusalCode.JOB_BUDGET
    assert len(BudgetStore(tmp_path / "state" / STORE_FILE).charges()) == 3


@pytest.mark.node
@pytest.mark.parametrize("update", ["lora", "lora-fa"])
def test_a_node_releases_then_fine_tunes_within_one_target(tmp_path: Path, update: str) -> None:
    job = warm_start_job(tmp_path, f'update = "{update}"\nwarm_start = "prototypes"')
    settings = node_file(tmp_path, 20.0)
    first = train_round(job, settings, run_id=1, server_round=1)
    assert set(update_of(first)) == {prototypes.SUMS, prototypes.COUNTS}
    release = signed_record(first)
    assert (release.sample_rate, release.steps) == (1.0, 1)

    records = [release]
    for reply in _training_rounds(job, settings):
        sent = update_of(reply)
        assert set(sent) == set(global_arrays(job))
        changed = [n for n in sent if "lora_B" in n and np.abs(sent[n]).max() > 0]
        assert changed  # the encoder's adapters trained, not the head alone
        records.append(signed_record(reply))
    last = records[-1]
    sample_rate, steps = poisson_schedule(examples=EXAMPLES, batch_size=job.train.batch_size)
    assert (last.sample_rate, last.steps) == (sample_rate, steps)
    assert last.history[0] == (release.noise_multiplier, 1.0, 1)
    assert 7.99 - 0.01 <= last.epsilon <= 8.0
    assert len(BudgetStore(tmp_path / "state" / STORE_FILE).charges()) == job.train.server_rounds
