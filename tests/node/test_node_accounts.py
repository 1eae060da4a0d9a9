"""A dataset's lifetime budget is the operator's account: no job's view of the data resets it."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from node_harness import charge_details, node_file, signed_record, train_round
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.client.node_config import load_node_settings
from residency.common.config.job import Job, load_job
from residency.common.errors import BudgetExceeded, PolicyViolation
from residency.common.privacy.accountant import compose, epsilon_spent, within_budget
from residency.common.privacy.sampling import poisson_schedule
from residency.common.refusal import RefusalCode
from toy_federation import write_toy_job

pytestmark = pytest.mark.node

BUDGET = 13.0


def _with_note_column(path: Path) -> None:
    """Give the operator's file a second text column a job could pick instead."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label", "note"])
        writer.writeheader()
        writer.writerows({**row, "note": row["text"][::-1]} for row in rows)


def _relabelled(job: Job, **data: object) -> Job:
    return job.model_copy(update={"data": job.data.model_copy(update=data)})


def test_no_view_of_the_data_opens_a_fresh_account(tmp_path: Path) -> None:
    job = load_job(write_toy_job(tmp_path / "job", countries=("DE",), examples=60, rounds=1))
    data = tmp_path / "job" / "de.csv"
    _with_note_column(data)
    settings = node_file(tmp_path, BUDGET)
    store = BudgetStore(tmp_path / "state" / STORE_FILE)

    def append_one() -> Job:
        with data.open("a", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerow(["good fine happy", "pos", "x"])
        return job

    # Another view of the same file is not the operator's declared schema: refused before the
    # node reads the data or plans a noise level, so it never reaches an account.
    for run_id, view in enumerate(
        (
            _relabelled(job, labels=["obj", "neg", "pos"]),
            _relabelled(job, labels=["pos", "neg", "obj", "zzz"]),
            _relabelled(job, text_column="note"),
        ),
        start=100,
    ):
        with pytest.raises(PolicyViolation) as refused:
            train_round(view, settings, run_id=run_id, server_round=1)
        assert refused.value.refusal.code is RefusalCode.SCHEMA_MISMATCH
    assert store.charges() == []
    variants = [
        ("as written", lambda: job),
        ("one record appended", append_one),
        ("as written again", lambda: job),
        ("as written once more", lambda: job),
    ]
    outcomes: list[bool] = []
    reasons: list[str] = []
    steps = []
    for run_id, (_, make) in enumerate(variants, start=1):
        variant = make()
        try:
            reply = train_round(variant, settings, run_id=run_id, server_round=1)
            outcomes.append(True)
            assert signed_record(reply).epsilon_dataset is None
            assert charge_details(tmp_path / "state")[-1]["epsilon_dataset"] <= BUDGET * 1.0001
        except BudgetExceeded as exc:
            outcomes.append(False)
            reasons.append(str(exc))
        with sqlite3.connect(store.path) as db:
            (noise,) = db.execute(  # each run here is a new launch: the newest job's noise
                "SELECT noise_multiplier FROM job_noise ORDER BY rowid DESC LIMIT 1"
            ).fetchone()
        public = load_node_settings(settings).public_records  # the schedule's size, not N
        rate, per_epoch = poisson_schedule(examples=public, batch_size=variant.train.batch_size)
        steps.append((float(noise), rate, variant.train.local_epochs * per_epoch))

    # The library accountant, replaying every attempt on one account, says where to refuse.
    history: tuple[tuple[float, float, int], ...] = ()
    expected = []
    for step in steps:
        projected = epsilon_spent(compose(history, step), delta=1e-4, kind=job.privacy.accountant)
        expected.append(within_budget(projected, BUDGET))
        if expected[-1]:
            history = compose(history, step)
    assert outcomes == expected
    assert all("dataset budget 13.00" in reason for reason in reasons)
    assert False in expected, "the budget must run out within this test"
    assert len({charge.dataset for charge in store.charges()}) == 1
    assert store.history(store.charges()[0].dataset) == history


def test_only_the_operators_reset_opens_a_new_account(tmp_path: Path) -> None:
    job = load_job(write_toy_job(tmp_path / "job", countries=("DE",), examples=60, rounds=1))
    settings = node_file(tmp_path, 8.0, extra='dataset = "triage-notes"\n')
    first = signed_record(train_round(job, settings, run_id=1, server_round=1))
    with pytest.raises(BudgetExceeded, match=r"dataset budget 8\.00"):
        train_round(job, settings, run_id=2, server_round=1)
    store = BudgetStore(tmp_path / "state" / STORE_FILE)
    old, new = store.reset("triage-notes", tmp_path / "job" / "de.csv", reason="new cohort")
    assert first.launcher is not None
    assert store.launcher_account(old, launcher=first.launcher) == first.dataset
    second = signed_record(train_round(job, settings, run_id=3, server_round=1))
    assert second.dataset == store.launcher_account(new, launcher=first.launcher)
    assert store.history(old) == store.history(new)  # the old account keeps what it spent
