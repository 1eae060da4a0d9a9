"""The node's durable budget: charges survive restarts and kills, and are never lowered."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from deployment_harness import wait_until
from residency.client.budget_store import BudgetStore, Held
from residency.common.errors import ConfigError

pytestmark = pytest.mark.unit

STEP = (1.1, 0.1, 20)


JOB_A, JOB_B = "a" * 64, "b" * 64  # two signed jobs' hashes


def charge(
    store: BudgetStore,
    run: str = "r1",
    dataset: str = "d" * 64,
    rnd: int = 1,
    job_account: str = JOB_A,
) -> int:
    charge_id, _ = store.charge_within(
        run=run,
        job="job",
        job_account=job_account,
        server_round=rnd,
        dataset=dataset,
        step=STEP,
        delta=1e-5,
        accountant="prv",
        planned=(STEP,) * 3,
        hold_s=3600.0,
        check=lambda run_history, account_history, held: None,
    )
    return charge_id


def test_charges_compose_per_dataset_across_runs_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    charge(BudgetStore(path), run="r1", rnd=1)
    charge(BudgetStore(path), run="r1", rnd=2)  # a restarted node opens the same file
    charge(BudgetStore(path), run="r2", rnd=1, job_account=JOB_B)  # another launch
    charge(BudgetStore(path), run="r2", dataset="e" * 64, job_account=JOB_B)
    store = BudgetStore(path)
    assert store.history("d" * 64) == ((1.1, 0.1, 60),)
    assert store.history("d" * 64, job_account=JOB_A) == ((1.1, 0.1, 40),)
    assert store.history("e" * 64) == ((1.1, 0.1, 20),)
    assert [c.round for c in store.charges("d" * 64)] == [1, 2, 1]


def test_a_signed_job_is_one_account_whatever_run_carries_it(tmp_path: Path) -> None:
    """A coordinator replaying a signed job under new runs continues the job's one account."""
    path = tmp_path / "budget.sqlite"
    for run in ("r1", "r2", "r3"):
        charge(BudgetStore(path), run=run)
    store = BudgetStore(path)
    assert store.history("d" * 64, job_account=JOB_A) == ((1.1, 0.1, 60),)
    assert [c.run for c in store.charges(job_account=JOB_A)] == ["r1", "r2", "r3"]
    assert store.charges(job_account=JOB_B) == []


def test_noise_is_fixed_per_signed_job_and_dataset(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    fixed = BudgetStore(path).noise_for
    assert fixed(job_account=JOB_A, dataset="d", derive=lambda: 0.7) == 0.7
    assert fixed(job_account=JOB_A, dataset="d", derive=lambda: 9.9) == 0.7
    assert fixed(job_account=JOB_A, dataset="d", phase="warm-start", derive=lambda: 3.0) == 3.0
    assert fixed(job_account=JOB_B, dataset="d", derive=lambda: 0.8) == 0.8
    with sqlite3.connect(path) as db, pytest.raises(sqlite3.IntegrityError, match="fixed"):
        db.execute("UPDATE job_noise SET noise_multiplier = 0.1")


def test_an_opener_reading_the_store_holds_up_no_other_openers_charge(tmp_path: Path) -> None:
    """Two rounds of two jobs open one store at once (CI saw 'database is locked' from this).

    The file is in WAL mode from its first opening, so one connection's open read never
    blocks another's write, and no connection switches the mode under another's read.
    """
    path = tmp_path / "budget.sqlite"
    BudgetStore(path)
    with sqlite3.connect(path, isolation_level=None) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM charges").fetchone()  # a read left open
        started = time.monotonic()
        charge(BudgetStore(path))
        assert BudgetStore(path).noise_for(job_account=JOB_A, dataset="d", derive=lambda: 0.7)
        assert time.monotonic() - started < 5  # no wait on the reader (its timeout is 30 s)
        reader.execute("COMMIT")
    assert len(BudgetStore(path).charges()) == 1


def test_a_store_from_before_job_accounts_keeps_each_old_run_apart(tmp_path: Path) -> None:
    """Old charges keep their own run as their job; nothing already spent is re-keyed."""
    path = tmp_path / "budget.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE charges (id INTEGER PRIMARY KEY AUTOINCREMENT, run TEXT NOT NULL,"
            " job TEXT NOT NULL, round INTEGER NOT NULL, dataset TEXT NOT NULL,"
            " noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, steps INTEGER NOT NULL,"
            " delta REAL NOT NULL, accountant TEXT NOT NULL, charged_at TEXT NOT NULL,"
            " trained_at TEXT)"
        )
        db.execute(
            "INSERT INTO charges (run, job, round, dataset, noise_multiplier, sample_rate, steps,"
            " delta, accountant, charged_at) VALUES ('7', 'job', 1, ?, 1.1, 0.1, 20, 1e-5, 'prv',"
            " 'then')",
            ("d" * 64,),
        )
    charge(BudgetStore(path), run="8")
    store = BudgetStore(path)
    assert [c.job_account for c in store.charges()] == ["run:7", JOB_A]
    assert store.history("d" * 64) == ((1.1, 0.1, 40),)
    assert store.history("d" * 64, job_account=JOB_A) == ((1.1, 0.1, 20),)
    with sqlite3.connect(path) as db, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE charges SET job_account = ?", (JOB_A,))


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

    def refuse(run_history: object, account_history: object, held: object) -> None:
        seen.append((run_history, account_history))
        raise RuntimeError("over budget")

    with pytest.raises(RuntimeError, match="over budget"):
        store.charge_within(
            run="r1",
            job="job",
            job_account=JOB_A,
            server_round=2,
            dataset="d" * 64,
            step=STEP,
            delta=1e-5,
            accountant="prv",
            planned=(STEP,),
            hold_s=3600.0,
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


def test_a_job_holds_its_planned_steps_still_to_come_until_the_hold_lapses(
    tmp_path: Path,
) -> None:
    """Other jobs see what a held job has still to run; the job itself sees its own hold."""
    store = BudgetStore(tmp_path / "budget.sqlite")
    dataset = "d" * 64
    store.reserve_within(
        job_account=JOB_A,
        dataset=dataset,
        planned=((1.1, 0.1, 60),),
        delta=1e-5,
        accountant="prv",
        hold_s=3600.0,
        check=lambda job, account, held: None,
    )
    assert store.held(dataset, job_account=JOB_B).others == ((1.1, 0.1, 60),)
    assert store.held(dataset, job_account=JOB_A).own
    assert not store.held("e" * 64, job_account=JOB_B).others  # another account
    charge(store, dataset=dataset)  # one round of A (20 steps), which renews its hold
    assert store.held(dataset, job_account=JOB_B).others == ((1.1, 0.1, 40),)
    for rnd in (2, 3):
        charge(store, dataset=dataset, rnd=rnd)
    assert store.held(dataset, job_account=JOB_B).others == ()  # A ran its plan
    lapsing = BudgetStore(tmp_path / "other.sqlite")
    lapsing.reserve_within(
        job_account=JOB_A,
        dataset=dataset,
        planned=(STEP,),
        delta=1e-5,
        accountant="prv",
        hold_s=0.05,
        check=lambda job, account, held: None,
    )
    assert lapsing.reservations(dataset)
    wait_until(lambda: not lapsing.reservations(dataset), timeout_s=10, what="the hold to lapse")
    assert lapsing.held(dataset, job_account=JOB_B) == Held((), own=False)


def test_a_refused_reservation_holds_nothing(tmp_path: Path) -> None:
    store = BudgetStore(tmp_path / "budget.sqlite")

    def refuse(job: object, account: object, held: object) -> None:
        raise RuntimeError("cannot afford")

    with pytest.raises(RuntimeError, match="cannot afford"):
        store.reserve_within(
            job_account=JOB_A,
            dataset="d" * 64,
            planned=(STEP,),
            delta=1e-5,
            accountant="prv",
            hold_s=60.0,
            check=refuse,
        )
    assert store.reservations() == []


def test_a_file_that_is_no_store_is_named_with_its_fix_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "budget.sqlite"
    path.write_bytes(b"garbage " * 512)
    with pytest.raises(ConfigError) as raised:
        BudgetStore(path)
    said = str(raised.value)
    assert said.startswith(f"{path}: the node's budget store cannot be opened (")
    assert "fix: restore the node's state folder from its backup" in said
    assert "\n" not in said
    assert path.read_bytes() == b"garbage " * 512
