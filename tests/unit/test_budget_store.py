"""The node's durable budget: charges survive restarts and kills, and are never lowered."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from residency.client.budget_store import BudgetStore

pytestmark = pytest.mark.unit

STEP = (1.1, 0.1, 20)


def charge(store: BudgetStore, run: str = "r1", dataset: str = "d" * 64, rnd: int = 1) -> int:
    charge_id, _ = store.charge_within(
        run=run,
        job="job",
        server_round=rnd,
        dataset=dataset,
        step=STEP,
        delta=1e-5,
        accountant="prv",
        check=lambda run_history, account_history: None,
    )
    return charge_id


def test_charges_compose_per_dataset_across_runs_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    charge(BudgetStore(path), run="r1", rnd=1)
    charge(BudgetStore(path), run="r1", rnd=2)  # a restarted node opens the same file
    charge(BudgetStore(path), run="r2", rnd=1)  # a re-run of the job
    charge(BudgetStore(path), run="r2", dataset="e" * 64)
    store = BudgetStore(path)
    assert store.history("d" * 64) == ((1.1, 0.1, 60),)
    assert store.history("d" * 64, run="r1") == ((1.1, 0.1, 40),)
    assert store.history("e" * 64) == ((1.1, 0.1, 20),)
    assert [c.round for c in store.charges("d" * 64)] == [1, 2, 1]


def test_noise_is_fixed_per_run_and_dataset(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    assert BudgetStore(path).noise_for(run="r", dataset="d", derive=lambda: 0.7) == 0.7
    assert BudgetStore(path).noise_for(run="r", dataset="d", derive=lambda: 9.9) == 0.7
    assert BudgetStore(path).noise_for(run="r2", dataset="d", derive=lambda: 0.8) == 0.8


def test_charges_cannot_be_deleted_or_lowered(tmp_path: Path) -> None:
    store = BudgetStore(tmp_path / "budget.sqlite")
    charge(store)
    with sqlite3.connect(store.path) as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM charges")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE charges SET steps = 1")
    assert store.history("d" * 64) == (STEP,)


def _charge_then_die(path: Path) -> None:
    charge(BudgetStore(path))
    os.kill(os.getpid(), signal.SIGKILL)  # the node dies mid-training, before `trained`


def test_write_ahead_charge_survives_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    child = multiprocessing.get_context("fork").Process(target=_charge_then_die, args=(path,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    charges = BudgetStore(path).charges()
    assert len(charges) == 1
    assert charges[0].trained_at is None  # charged, never trained: still spent
    assert BudgetStore(path).history("d" * 64) == (STEP,)


def test_refusals_are_kept(tmp_path: Path) -> None:
    store = BudgetStore(tmp_path / "budget.sqlite")
    store.refuse(run="r", job="j", server_round=3, dataset=None, reason="DE refused round 3")
    assert [r[4] for r in BudgetStore(store.path).refusals()] == ["DE refused round 3"]


def test_a_refused_check_writes_nothing(tmp_path: Path) -> None:
    store = BudgetStore(tmp_path / "budget.sqlite")
    charge(store)
    seen: list[tuple[object, object]] = []

    def refuse(run_history: object, account_history: object) -> None:
        seen.append((run_history, account_history))
        raise RuntimeError("over budget")

    with pytest.raises(RuntimeError, match="over budget"):
        store.charge_within(
            run="r1",
            job="job",
            server_round=2,
            dataset="d" * 64,
            step=STEP,
            delta=1e-5,
            accountant="prv",
            check=refuse,
        )
    assert seen == [((STEP,), (STEP,))]  # the check saw every committed charge
    assert len(store.charges()) == 1


def test_an_account_is_the_operators_dataset_and_only_a_reset_opens_another(
    tmp_path: Path,
) -> None:
    data = tmp_path / "de.csv"
    data.write_text("text,label\na,x\n", encoding="utf-8")
    store = BudgetStore(tmp_path / "budget.sqlite")
    first = store.account("patients", data)
    data.write_text("text,label\na,x\nb,y\n", encoding="utf-8")  # edited, appended
    assert BudgetStore(store.path).account("patients", data) == first
    assert store.account("patients", tmp_path / "." / "de.csv") == first  # same file
    assert store.account("other", data) != first
    old, new = store.reset("patients", data, reason="new consent round")
    assert (old, store.account("patients", data)) == (first, new)
    assert new != first
    assert [(a.generation, a.reason) for a in store.accounts() if a.name == "patients"] == [
        (0, None),
        (1, "new consent round"),
    ]
    with pytest.raises(ValueError, match="reason"):
        store.reset("patients", data, reason="  ")
    # Keyed by this store's own secret: another node's store names the same file otherwise.
    assert BudgetStore(tmp_path / "other.sqlite").account("patients", data) not in {first, new}
    with sqlite3.connect(store.path) as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM accounts")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE accounts SET generation = 0")
