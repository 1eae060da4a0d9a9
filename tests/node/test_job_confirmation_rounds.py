"""Nobody spends for a job that cannot finish: whole rounds against a confirmed job's hold.

Issue 26, point 2, through the node's ClientApp (seconds each): a job that cannot finish is
refused before any charge, a held budget is kept from other jobs until its job has run, one
round trains at a time, and a policy floor binds the training after a release. Confirming
and holding a job on its own is checked in ``tests/unit/test_job_confirmation.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from flwr.app import Message

from confirmation_job import node_store, two_round_job  # noqa: F401 (the fixture job)
from deployment_harness import wait_until
from node_harness import (
    confirm_round,
    node_context,
    node_file,
    round_message,
    task_identity,
    train_round,
)
from residency.client.budget_store import STORE_FILE
from residency.client.client_app import _train
from residency.common.config.job import Job, load_job
from residency.common.errors import BudgetExceeded, PolicyViolation
from residency.common.refusal import RefusalCode
from toy_federation import write_toy_job

pytestmark = [
    pytest.mark.usefixtures("flower_task"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


@pytest.mark.node
def test_a_job_that_cannot_finish_is_refused_before_any_charge(job: Job, tmp_path: Path) -> None:
    """The filed case: a lifetime budget of 9, one target-8 job spent; a second is refused."""
    settings = node_file(tmp_path, budget=9.0)
    confirm_round(job, settings, run_id=1)
    for server_round in (1, 2):
        train_round(job, settings, run_id=1, server_round=server_round)
    store = node_store(tmp_path)
    assert len(store.charges()) == 2
    with pytest.raises(BudgetExceeded) as refused:
        confirm_round(job, settings, run_id=2)
    assert refused.value.refusal.code is RefusalCode.JOB_UNAFFORDABLE
    values = refused.value.refusal.values
    assert values["budget"] == 9.0
    assert values["committed"] == pytest.approx(8.0, abs=0.02)  # what job 1 spent
    assert values["needed"] > 1.0
    with pytest.raises(BudgetExceeded, match="the whole job does not fit"):
        train_round(job, settings, run_id=2, server_round=1)  # a coordinator that skips asking
    assert len(store.charges()) == 2  # nobody charged
    assert [r.job_account for r in store.reservations()] == [store.charges()[0].job_account]


@pytest.mark.node
def test_a_held_budget_is_kept_from_other_jobs_until_its_job_has_run(
    job: Job, tmp_path: Path
) -> None:
    settings = node_file(tmp_path, budget=10.0)
    confirm_round(job, settings, run_id=1)  # job 1 holds ~8 of 10
    with pytest.raises(BudgetExceeded) as refused:
        confirm_round(job, settings, run_id=2)
    assert refused.value.refusal.values["committed"] == pytest.approx(8.0, abs=0.02)
    with pytest.raises(BudgetExceeded, match="held for other jobs"):
        train_round(job, settings, run_id=2, server_round=1)
    for server_round in (1, 2):  # the held job runs whole
        train_round(job, settings, run_id=1, server_round=server_round)
    store = node_store(tmp_path)
    assert [c.round for c in store.charges()] == [1, 2]
    with pytest.raises(BudgetExceeded):  # spent now, no longer held: still not affordable
        confirm_round(job, settings, run_id=3)


@pytest.mark.node
def test_one_round_trains_at_a_time_and_one_whose_round_closed_meanwhile_is_not_charged(
    job: Job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26, point 5: another job's round waits for the node, and never races it."""
    import threading

    from residency.client import client_app

    settings = node_file(tmp_path, budget=40.0)
    spans: list[tuple[float, float]] = []
    real = client_app.train_dp_round

    def timed(*args: object, **kwargs: object) -> object:
        start = time.monotonic()
        try:
            return real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            spans.append((start, time.monotonic()))

    monkeypatch.setattr(client_app, "train_dp_round", timed)
    errors: list[BaseException] = []
    with task_identity(1):  # two jobs' round 1, built first, then sent at once
        sent = [round_message(job, server_round=1, nonce=f"{nonce:032x}") for nonce in (1, 2)]

        def handle(message: Message) -> None:
            try:
                _train(message, node_context(settings, run_id=1))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=handle, args=(m,)) for m in sent]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    (_, first_end), (second_start, _) = sorted(spans)
    assert first_end <= second_start  # never at once

    store = node_store(tmp_path)
    with store.node_lock():  # the node is busy with another round for longer than this one lives
        late: list[BaseException] = []
        waiting = threading.Thread(
            target=lambda: late.extend(_refusal_of(job, settings, ttl=0.3)), daemon=True
        )
        started = time.monotonic()
        waiting.start()
        wait_until(  # keep the node busy past the waiting round's life (ttl 0.3 s)
            lambda: time.monotonic() - started > 0.8, timeout_s=10, what="the round to close"
        )
    waiting.join()
    [closed] = late
    assert isinstance(closed, PolicyViolation)
    assert closed.refusal.code is RefusalCode.ROUND_CLOSED
    assert len(store.charges()) == 2  # the two rounds above; the closed one charged nothing


def _refusal_of(job: Job, settings: Path, *, ttl: float) -> list[BaseException]:
    try:
        train_round(job, settings, run_id=1, server_round=1, nonce=f"{3:032x}", ttl=ttl)
    except BaseException as exc:
        return [exc]
    return []


@pytest.mark.node
def test_a_policy_floor_binds_the_training_after_a_release_before_the_release_is_spent(
    tmp_path: Path,
) -> None:
    import sqlite3

    warm = load_job(
        write_toy_job(
            tmp_path / "job",
            countries=("DE",),
            examples=60,
            rounds=2,
            train='update = "head"\nwarm_start = "prototypes"',
        )
    )
    probe = node_file(tmp_path, budget=20.0, state="probe")
    confirm_round(warm, probe, run_id=1)
    with sqlite3.connect(tmp_path / "probe" / STORE_FILE) as db:
        noises = dict(db.execute("SELECT phase, noise_multiplier FROM job_noise").fetchall())
    release, training = noises["warm-start"], noises[""]
    assert training < release  # the release's one step is noisier than each training step
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'name = "floor"\nmin_noise_multiplier = {(training + release) / 2}\n', "utf-8"
    )
    settings = node_file(tmp_path, budget=20.0, extra='policy = "policy.toml"\n')
    with pytest.raises(PolicyViolation) as refused:
        train_round(warm, settings, run_id=1, server_round=1)  # the release itself is above it
    assert refused.value.refusal.code is RefusalCode.NOISE_BELOW_POLICY
    assert refused.value.refusal.values["noise"] == pytest.approx(training)
    assert node_store(tmp_path).charges() == []
