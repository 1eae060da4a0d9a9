"""A signed job spends at most its target on a node, across every Flower run that carries it.

The job's account is the hash of the bytes its launcher signed (with a fresh nonce and an
expiry), never the coordinator's run id: a replay, or the same job after a coordinator
restart, continues the one account (issue 24, points 4 and 5).
"""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

import pytest

from job_account import NONCE, one_country_job
from node_harness import TEST_LAUNCHER
from residency.client.budget_store import BudgetStore
from residency.common.config.signed_job import (
    ExpiredJob,
    SignedJob,
    UntrustedJob,
    job_body,
    new_launch,
    open_job,
    sign_job,
)
from residency.common.errors import ConfigError

# Whole rounds through the ClientApp (seconds each) are in tests/node/test_job_account_replays.py.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


@pytest.mark.unit
def test_the_job_lock_lets_one_message_of_a_job_in_at_a_time(tmp_path: Path) -> None:
    store = BudgetStore(tmp_path / "budget.sqlite")
    with store.job_lock("a" * 64):
        lock = tmp_path / "locks" / f"{'a' * 64}.lock"
        with lock.open("a") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another message of the job
        with (tmp_path / "locks" / f"{'b' * 64}.lock").open("a") as another_job:
            fcntl.flock(another_job, fcntl.LOCK_EX | fcntl.LOCK_NB)  # other jobs go on
    with lock.open("a") as after:
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(ValueError, match="SHA-256"):
        store.job_lock("../../etc/passwd").__enter__()


@pytest.mark.unit
def test_every_signing_is_a_new_launch_with_an_expiry(tmp_path: Path) -> None:
    job = one_country_job(tmp_path)
    trusted = [TEST_LAUNCHER.public_hex]
    first, second = sign_job(job, TEST_LAUNCHER), sign_job(job, TEST_LAUNCHER)
    assert first.sha256 != second.sha256  # two launches: two job accounts on every node
    opened = open_job(first, trusted, operator="node.toml")
    assert opened.launch is not None
    assert 29 * 86_400 < opened.launch.expires_unix_s - time.time() <= 30 * 86_400
    assert (opened.train, opened.privacy, opened.model) == (job.train, job.privacy, job.model)
    with pytest.raises(ExpiredJob, match=r"expired at .*; fix: launch it again"):
        open_job(first, trusted, operator="node.toml", now_s=opened.launch.expires_unix_s)
    with pytest.raises(ValueError, match="valid days"):
        new_launch(valid_days=0)


@pytest.mark.unit
def test_a_job_signed_without_a_launch_is_refused(tmp_path: Path) -> None:
    """An old-style signature: its replays could not be told apart, so it runs nowhere."""
    job = one_country_job(tmp_path)
    body = job_body(job)
    signed = SignedJob(
        body=body,
        launcher=TEST_LAUNCHER.public_hex,
        signature=TEST_LAUNCHER.sign(body.encode("ascii")),
    )
    with pytest.raises(UntrustedJob, match="without a launch nonce and expiry; fix:"):
        open_job(signed, [TEST_LAUNCHER.public_hex], operator="node.toml")


@pytest.mark.unit
def test_a_job_file_cannot_choose_its_launch(tmp_path: Path) -> None:
    launch = f'[launch]\nnonce = "{NONCE}"\nexpires_unix_s = 4102444800\n'
    with pytest.raises(ConfigError, match=r"launch.*fix: remove the \[launch\] table"):
        one_country_job(tmp_path, extra=launch)
