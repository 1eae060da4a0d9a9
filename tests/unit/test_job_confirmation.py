"""Nobody spends for a job that cannot finish: a node confirms the whole job, then holds it.

Issue 26, point 2: a node with 0.98 epsilon left trained two rounds of a target-4 job and then
refused. Now a job's first charge on a node (and the coordinator's confirmation query before
round 1) checks the whole job against the dataset's budget and every other job's hold, and a
confirmed job's budget is held until it has run or the hold lapses. Whole rounds against a
hold are in ``tests/node/test_job_confirmation_rounds.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from flwr.app import Message

from confirmation_job import node_store, two_round_job  # noqa: F401 (the fixture job)
from deployment_harness import wait_until
from node_harness import confirm_round, node_file, train_round
from residency.client.client_app import query
from residency.client.egress import guard_reply
from residency.common import wire
from residency.common.config.job import Job
from residency.common.errors import PolicyViolation
from residency.common.privacy.accountant import epsilon_spent
from residency.common.refusal import RefusalCode, decode

pytestmark = [
    pytest.mark.usefixtures("flower_task"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


@pytest.mark.unit
def test_a_confirmed_job_is_held_whole_and_charged_nothing(job: Job, tmp_path: Path) -> None:
    settings = node_file(tmp_path, budget=20.0)
    reply = confirm_round(job, settings, run_id=1)
    assert dict(reply.content.config_records[wire.NODE]) == {wire.COUNTRY: "DE"}
    assert set(reply.content) == {wire.NODE}  # no record, no update, no number
    store = node_store(tmp_path)
    assert store.charges() == []
    [held] = store.reservations()
    planned = epsilon_spent(held.planned, delta=1e-4, kind=job.privacy.accountant)
    assert planned == pytest.approx(job.privacy.target_epsilon, abs=0.02)
    assert held.expires_at > time.time() + 71 * 3600  # node.toml's default: 72 hours
    again = confirm_round(job, settings, run_id=2, nonce=f"{1:032x}")  # the same signed job
    assert again.content.config_records[wire.NODE][wire.COUNTRY] == "DE"
    assert len(store.reservations()) == 1  # renewed, not held twice


@pytest.mark.unit
def test_a_lapsed_hold_frees_the_budget(job: Job, tmp_path: Path) -> None:
    settings = node_file(tmp_path, budget=10.0, extra="reservation_hours = 0.00002\n")
    confirm_round(job, settings, run_id=1)  # held for 72 ms
    store = node_store(tmp_path)
    wait_until(lambda: not store.reservations(), timeout_s=10, what="job 1's hold to lapse")
    confirm_round(job, settings, run_id=2)  # job 1 never came back; job 2 may use the budget
    assert len(node_store(tmp_path).reservations()) == 1


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
    assert node_store(tmp_path).charges() == []


@pytest.mark.unit
def test_the_jobs_end_frees_its_hold_and_is_no_round(job: Job, tmp_path: Path) -> None:
    settings = node_file(tmp_path, budget=10.0)
    confirm_round(job, settings, run_id=1)
    other_launch = {"job-ended": True}
    confirm_round(job, settings, run_id=2, overrides=other_launch)  # not job 1: nothing freed
    assert len(node_store(tmp_path).reservations()) == 1
    ended = confirm_round(job, settings, run_id=1, overrides={"job-ended": True})
    assert dict(ended.content.config_records[wire.NODE]) == {wire.COUNTRY: "DE"}
    assert node_store(tmp_path).reservations() == []
    confirm_round(job, settings, run_id=3)  # the budget is free for another job
    with pytest.raises(PolicyViolation, match="a job's end is a query, not a round"):
        train_round(job, settings, run_id=3, server_round=1, overrides={"job-ended": True})
    assert node_store(tmp_path).charges() == []
