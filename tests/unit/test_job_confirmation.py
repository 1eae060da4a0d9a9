"""Nobody spends for a job that cannot finish: a node confirms the whole job, then holds it.

Issue 26, point 2: a node with 0.98 epsilon left trained two rounds of a target-4 job and then
refused. Now a job's first charge on a node (and the coordinator's confirmation query before
round 1) checks the whole job against the dataset's budget and every other job's hold, and a
confirmed job's budget is held until it has run or the hold lapses.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from flwr.app import Message

from deployment_harness import wait_until
from node_harness import (
    confirm_round,
    node_context,
    node_file,
    round_message,
    task_identity,
    train_round,
)
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.client.client_app import _train, query
from residency.client.egress import guard_reply
from residency.common import wire
from residency.common.config.job import Job, load_job
from residency.common.errors import BudgetExceeded, PolicyViolation
from residency.common.privacy.accountant import epsilon_spent
from residency.common.refusal import RefusalCode, decode
from toy_federation import write_toy_job

pytestmark = [
    pytest.mark.usefixtures("flower_task"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return load_job(write_toy_job(tmp_path / "job", countries=("DE",), examples=60, rounds=2))


def _store(tmp_path: Path) -> BudgetStore:
    return BudgetStore(tmp_path / "state" / STORE_FILE)


@pytest.mark.unit
def test_a_confirmed_job_is_held_whole_and_charged_nothing(job: Job, tmp_path: Path) -> None:
    settings = node_file(tmp_path, budget=20.0)
    reply = confirm_round(job, settings, run_id=1)
    assert dict(reply.content.config_records[wire.NODE]) == {wire.COUNTRY: "DE"}
    assert set(reply.content) == {wire.NODE}  # no record, no update, no number
    store = _store(tmp_path)
    assert store.charges() == []
    [held] = store.reservations()
    planned = epsilon_spent(held.planned, delta=1e-4, kind=job.privacy.accountant)
    assert planned == pytest.approx(job.privacy.target_epsilon, abs=0.02)
    assert held.expires_at > time.time() + 71 * 3600  # node.toml's default: 72 hours
    again = confirm_round(job, settings, run_id=2, nonce=f"{1:032x}")  # the same signed job
    assert again.content.config_records[wire.NODE][wire.COUNTRY] == "DE"
    assert len(store.reservations()) == 1  # renewed, not held twice


@pytest.mark.node
def test_a_job_that_cannot_finish_is_refused_before_any_charge(job: Job, tmp_path: Path) -> None:
    """The filed case: a lifetime budget of 9, one target-8 job spent; a second is refused."""
    settings = node_file(tmp_path, budget=9.0)
    confirm_round(job, settings, run_id=1)
    for server_round in (1, 2):
        train_round(job, settings, run_id=1, server_round=server_round)
    store = _store(tmp_path)
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
    store = _store(tmp_path)
    assert [c.round for c in store.charges()] == [1, 2]
    with pytest.raises(BudgetExceeded):  # spent now, no longer held: still not affordable
        confirm_round(job, settings, run_id=3)


@pytest.mark.unit
def test_a_lapsed_hold_frees_the_budget(job: Job, tmp_path: Path) -> None:
    settings = node_file(tmp_path, budget=10.0, extra="reservation_hours = 0.00002\n")
    confirm_round(job, settings, run_id=1)  # held for 72 ms
    store = _store(tmp_path)
    wait_until(lambda: not store.reservations(), timeout_s=10, what="job 1's hold to lapse")
    confirm_round(job, settings, run_id=2)  # job 1 never came back; job 2 may use the budget
    assert len(_store(tmp_path).reservations()) == 1


@pytest.mark.unit
def test_the_coordinator_sees_a_coded_refusal_or_a_bare_confirmation(
    job: Job, tmp_path: Path
) -> None:
    """Through the ClientApp's query handler and the egress guard, as a coordinator sees it."""
    settings = node_file(tmp_path, budget=10.0)

    def asked(run_id: int) -> Message:
        with_guard: list[Message] = []

        def handler(msg: Message, context: object) -> Message:
            reply = query(msg, context)  # type: ignore[arg-type]
            with_guard.append(guard_reply(msg, reply))
            return reply

        confirm_round(job, settings, run_id=run_id, handler=handler)  # type: ignore[arg-type]
        return with_guard[0]

    confirmed = asked(1)
    assert not confirmed.has_error()
    assert dict(confirmed.content.config_records[wire.NODE]) == {wire.COUNTRY: "DE"}
    refused = asked(2)
    assert refused.error.code == wire.REFUSED
    refusal = decode(refused.error.reason)
    assert refusal.code is RefusalCode.JOB_UNAFFORDABLE
    assert set(refusal.values) == {"budget", "committed", "needed"}
    assert _store(tmp_path).charges() == []


@pytest.mark.unit
def test_the_jobs_end_frees_its_hold_and_is_no_round(job: Job, tmp_path: Path) -> None:
    settings = node_file(tmp_path, budget=10.0)
    confirm_round(job, settings, run_id=1)
    other_launch = {"job-ended": True}
    confirm_round(job, settings, run_id=2, overrides=other_launch)  # not job 1: nothing freed
    assert len(_store(tmp_path).reservations()) == 1
    ended = confirm_round(job, settings, run_id=1, overrides={"job-ended": True})
    assert dict(ended.content.config_records[wire.NODE]) == {wire.COUNTRY: "DE"}
    assert _store(tmp_path).reservations() == []
    confirm_round(job, settings, run_id=3)  # the budget is free for another job
    with pytest.raises(PolicyViolation, match="a job's end is a query, not a round"):
        train_round(job, settings, run_id=3, server_round=1, overrides={"job-ended": True})
    assert _store(tmp_path).charges() == []


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

    store = _store(tmp_path)
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
    assert _store(tmp_path).charges() == []
