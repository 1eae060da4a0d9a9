"""A signed job spends at most its target on a node, across every Flower run that carries it.

Whole rounds through the node's ClientApp (seconds each): a signed job replayed under new runs
continues its one account and its noise, a release replayed or sent twice at once releases
once, and an expired job is refused uncharged. How jobs are signed and locked is checked in
``tests/unit/test_job_account.py``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from job_account import NONCE, one_country_job
from node_harness import (
    node_context,
    node_file,
    round_message,
    signed_record,
    task_identity,
    train_round,
)
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.client.client_app import _train
from residency.common.errors import PolicyViolation, Refused
from residency.common.privacy.accountant import epsilon_spent, within_budget
from residency.common.refusal import RefusalCode

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


@pytest.mark.node
def test_a_signed_job_replayed_under_new_runs_never_spends_past_its_target(
    tmp_path: Path,
) -> None:
    """The filed attack: one target-8 job replayed took the dataset to 8.00, 12.45, 16.27..."""
    job = one_country_job(tmp_path)
    settings = node_file(tmp_path, 100.0)  # a lifetime budget far above the job's target
    first = signed_record(train_round(job, settings, run_id=1, server_round=1, nonce=NONCE))
    assert 7.9 < first.epsilon <= 8.0
    for run_id in (2, 3, 4):
        with pytest.raises(Refused) as refused:
            train_round(job, settings, run_id=run_id, server_round=1, nonce=NONCE)
        assert refused.value.refusal.code is RefusalCode.JOB_BUDGET
    store = BudgetStore(tmp_path / "state" / STORE_FILE)
    [charge] = store.charges()
    lifetime = epsilon_spent(store.history(charge.dataset), delta=1e-4, kind=job.privacy.accountant)
    assert within_budget(lifetime, job.privacy.target_epsilon)
    assert len(store.refusals()) == 3


@pytest.mark.node
def test_a_replayed_job_continues_its_rounds_with_the_same_noise(tmp_path: Path) -> None:
    """A coordinator restarted after round 1 resumes the job: round 2 spends the rest."""
    job = one_country_job(tmp_path, rounds=2)
    settings = node_file(tmp_path, 100.0)
    one = signed_record(train_round(job, settings, run_id=1, server_round=1, nonce=NONCE))
    two = signed_record(train_round(job, settings, run_id=2, server_round=2, nonce=NONCE))
    assert two.noise_multiplier == one.noise_multiplier
    assert two.history == [(one.noise_multiplier, one.sample_rate, 2 * one.steps)]
    assert one.epsilon < two.epsilon <= 8.0 * 1.0001
    with pytest.raises(Refused) as refused:  # a third round, under yet another run
        train_round(job, settings, run_id=3, server_round=2, nonce=NONCE)
    assert refused.value.refusal.code is RefusalCode.JOB_BUDGET


@pytest.mark.node
def test_a_release_replayed_under_a_new_run_is_refused_uncharged(tmp_path: Path) -> None:
    job = one_country_job(tmp_path, "prototypes")
    settings = node_file(tmp_path, 100.0)
    train_round(job, settings, run_id=1, server_round=1, nonce=NONCE)
    with pytest.raises(PolicyViolation) as refused:
        train_round(job, settings, run_id=2, server_round=1, nonce=NONCE)
    assert refused.value.refusal.code is RefusalCode.INVALID_PLAN
    assert len(BudgetStore(tmp_path / "state" / STORE_FILE).charges()) == 1


@pytest.mark.node
def test_two_copies_of_a_release_sent_at_once_release_once(tmp_path: Path) -> None:
    """Flower's executor runs messages concurrently: two round-1 messages both released once."""
    job = one_country_job(tmp_path, "prototypes")
    settings = node_file(tmp_path, 100.0)
    meet = threading.Barrier(2)
    outcomes: list[str] = []

    def release(run_id: int) -> None:
        context = node_context(settings, run_id=run_id)
        message = messages[run_id]
        meet.wait(timeout=60)  # both messages enter the node together
        try:
            reply = _train(message, context)
            outcomes.append("released" if not reply.has_error() else "error")
        except Refused as exc:
            outcomes.append(exc.refusal.code.value)

    with task_identity(1):
        messages = {run_id: round_message(job, server_round=1, nonce=NONCE) for run_id in (1, 2)}
        racers = [threading.Thread(target=release, args=(run_id,)) for run_id in (1, 2)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(timeout=300)
    assert sorted(outcomes) == [RefusalCode.INVALID_PLAN.value, "released"]
    assert len(BudgetStore(tmp_path / "state" / STORE_FILE).charges()) == 1


@pytest.mark.node
def test_an_expired_job_is_refused_uncharged(tmp_path: Path) -> None:
    job = one_country_job(tmp_path)
    settings = node_file(tmp_path, 100.0)
    with pytest.raises(PolicyViolation) as refused:
        train_round(job, settings, run_id=1, server_round=1, expires_unix_s=int(time.time()) - 1)
    assert refused.value.refusal.code is RefusalCode.JOB_EXPIRED
    assert "expired at" in str(refused.value)
    assert BudgetStore(tmp_path / "state" / STORE_FILE).charges() == []
