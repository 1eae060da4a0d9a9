"""The node's durable privacy budget: every charge on every dataset, written before training.

One SQLite file in the node's state folder. A round's cost is committed as a *charge* before
any training step runs (write-ahead), so a crash, a kill or a restart after that point still
counts it as spent; nothing ever deletes or lowers a charge. Spending is composed per dataset
fingerprint over every round of every run that touched it, so re-running a job, restarting
the node or talking to a new coordinator never resets it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from residency.common.clock import now
from residency.common.privacy.accountant import History, PrivacyStep, compose

STORE_FILE = "budget.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS plans (
    run TEXT NOT NULL,
    dataset TEXT NOT NULL,
    noise_multiplier REAL NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run, dataset)
);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    job TEXT NOT NULL,
    round INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    delta REAL NOT NULL,
    accountant TEXT NOT NULL,
    charged_at TEXT NOT NULL,
    trained_at TEXT
);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    job TEXT NOT NULL,
    round INTEGER NOT NULL,
    dataset TEXT,
    reason TEXT NOT NULL,
    refused_at TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS charges_are_never_deleted BEFORE DELETE ON charges
BEGIN SELECT RAISE(ABORT, 'privacy charges are append-only'); END;
CREATE TRIGGER IF NOT EXISTS charges_are_never_lowered
BEFORE UPDATE OF run, job, round, dataset, noise_multiplier, sample_rate, steps, delta ON charges
BEGIN SELECT RAISE(ABORT, 'privacy charges are append-only'); END;
"""


@dataclass(frozen=True)
class Charge:
    """One round's privacy cost, as recorded before it trained."""

    id: int
    run: str
    job: str
    round: int
    dataset: str
    step: PrivacyStep
    delta: float
    accountant: str
    charged_at: str
    trained_at: str | None


class BudgetStore:
    """Append-only ledger of a node's charges and refusals (SQLite, synchronous commits)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.executescript(_SCHEMA)  # idempotent; runs in its own transaction

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before training starts
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def noise_for(self, *, run: str, dataset: str, derive: Callable[[], float]) -> float:
        """The noise multiplier fixed for ``run`` on ``dataset`` at its first round."""
        with self._db() as db:
            row = db.execute(
                "SELECT noise_multiplier FROM plans WHERE run = ? AND dataset = ?", (run, dataset)
            ).fetchone()
            if row is not None:
                return float(row[0])
            noise = derive()
            db.execute("INSERT INTO plans VALUES (?, ?, ?, ?)", (run, dataset, noise, now()))
            return noise

    def charges(self, dataset: str | None = None, *, run: str | None = None) -> list[Charge]:
        """Charges in the order they were made, optionally for one dataset and one run."""
        query = "SELECT * FROM charges WHERE (? IS NULL OR dataset = ?) AND (? IS NULL OR run = ?)"
        with self._db() as db:
            rows = db.execute(query + " ORDER BY id", (dataset, dataset, run, run)).fetchall()
        return [
            Charge(r[0], r[1], r[2], r[3], r[4], (r[5], r[6], r[7]), r[8], r[9], r[10], r[11])
            for r in rows
        ]

    def history(self, dataset: str, *, run: str | None = None) -> History:
        """Opacus-format history of every charge on ``dataset`` (optionally one run only)."""
        history: History = ()
        for charge in self.charges(dataset, run=run):
            history = compose(history, charge.step)
        return history

    def charge(
        self,
        *,
        run: str,
        job: str,
        server_round: int,
        dataset: str,
        step: PrivacyStep,
        delta: float,
        accountant: str,
    ) -> int:
        """Record a round's cost durably; call before the first training step."""
        noise, rate, steps = step
        with self._db() as db:
            cursor = db.execute(
                "INSERT INTO charges (run, job, round, dataset, noise_multiplier, sample_rate,"
                " steps, delta, accountant, charged_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run, job, server_round, dataset, noise, rate, steps, delta, accountant, now()),
            )
            return int(cursor.lastrowid or 0)

    def trained(self, charge_id: int) -> None:
        """Mark a charge's round as trained (its cost stays charged either way)."""
        with self._db() as db:
            db.execute("UPDATE charges SET trained_at = ? WHERE id = ?", (now(), charge_id))

    def refuse(
        self, *, run: str, job: str, server_round: int, dataset: str | None, reason: str
    ) -> None:
        """Remember a refusal for `residency node status`."""
        with self._db() as db:
            db.execute(
                "INSERT INTO refusals (run, job, round, dataset, reason, refused_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (run, job, server_round, dataset, reason, now()),
            )

    def refusals(self) -> list[tuple[str, str, int, str | None, str, str]]:
        """(run, job, round, dataset, reason, time) of every refusal, oldest first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT run, job, round, dataset, reason, refused_at FROM refusals ORDER BY id"
            ).fetchall()
        return [tuple(row) for row in rows]
