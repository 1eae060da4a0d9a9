"""The node's durable privacy budget: every charge on every dataset, written before training.

One SQLite file in the node's state folder. A round's cost is committed as a *charge* before
any training step runs (write-ahead), so a crash, a kill or a restart after that point still
counts it as spent; nothing ever deletes or lowers a charge. The budget check and the charge
are one ``BEGIN IMMEDIATE`` transaction (:meth:`BudgetStore.charge_within`), so two rounds
racing for the last of a budget cannot both pass the check.

Spending is composed per *account*: the dataset as the operator named it in ``node.toml``
(its name and the file it points at), never anything a job chooses (labels, columns, order,
lengths). Editing or appending to the file keeps the account; only the operator's explicit
:meth:`BudgetStore.reset` opens a new one. An account's identifier is an HMAC under a secret
kept in this store, so it names the account without revealing its name, path or content.
What leaves the node is not even that: each launcher (the key that signed a job) sees its own
pseudonym of the account (:meth:`BudgetStore.launcher_account`), so two coordinators cannot link
their rounds on one dataset, while one launcher's jobs keep one name for it.

Before a job's first charge on an account the node checks that the *whole* job fits the
account's budget and then *holds* it: a reservation of the job's planned steps still to come
(:meth:`BudgetStore.reserve_within`, and every charge renews it). Every other job's checks
count what the live reservations hold as if spent, so a job the node has accepted cannot be
starved of its budget half-way by another job. A reservation lapses when its job has charged
its plan, or ``reservation_hours`` after the job's last confirmation or charge; it never
lowers or replaces a charge.

A job's own target is accounted per *signed job* (the SHA-256 of the bytes its launcher
signed, which include a fresh nonce), not per Flower run: a coordinator that replays a signed
job under new runs, or resumes it after a restart, continues the same job account, so the job
never spends more than its signed target on any dataset, whatever runs carried it.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from residency.common.clock import now
from residency.common.errors import ConfigError
from residency.common.privacy.accountant import History, PrivacyStep, compose, remaining

STORE_FILE = "budget.sqlite"
T = TypeVar("T")
_ACCOUNT_DOMAIN = b"residency.dataset-account.v1"
_LAUNCHER_DOMAIN = b"residency.dataset-account.launcher.v1"

_SCHEMA = """
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
    trained_at TEXT,
    job_account TEXT
);
CREATE TABLE IF NOT EXISTS job_noise (
    job_account TEXT NOT NULL,
    dataset TEXT NOT NULL,
    phase TEXT NOT NULL,
    noise_multiplier REAL NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (job_account, dataset, phase)
);
CREATE TRIGGER IF NOT EXISTS job_noise_is_never_changed BEFORE UPDATE ON job_noise
BEGIN SELECT RAISE(ABORT, 'a job''s noise multiplier is fixed'); END;
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    job TEXT NOT NULL,
    round INTEGER NOT NULL,
    dataset TEXT,
    reason TEXT NOT NULL,
    refused_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    job_account TEXT NOT NULL,
    dataset TEXT NOT NULL,
    planned TEXT NOT NULL,
    delta REAL NOT NULL,
    accountant TEXT NOT NULL,
    reserved_at TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (job_account, dataset)
);
CREATE TABLE IF NOT EXISTS secret (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    key BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    generation INTEGER NOT NULL,
    opened_at TEXT NOT NULL,
    reason TEXT,
    UNIQUE (name, path, generation)
);
CREATE TRIGGER IF NOT EXISTS accounts_are_never_deleted BEFORE DELETE ON accounts
BEGIN SELECT RAISE(ABORT, 'budget accounts are append-only'); END;
CREATE TRIGGER IF NOT EXISTS accounts_are_never_changed BEFORE UPDATE ON accounts
BEGIN SELECT RAISE(ABORT, 'budget accounts are append-only'); END;
CREATE TRIGGER IF NOT EXISTS charges_are_never_deleted BEFORE DELETE ON charges
BEGIN SELECT RAISE(ABORT, 'privacy charges are append-only'); END;
CREATE TRIGGER IF NOT EXISTS charges_are_never_lowered
BEFORE UPDATE OF run, job, round, dataset, noise_multiplier, sample_rate, steps, delta ON charges
BEGIN SELECT RAISE(ABORT, 'privacy charges are append-only'); END;
"""

_MIGRATIONS = (
    # Stores made before jobs were accounted by their signed hash: each old charge keeps its
    # own Flower run as its job account (``_JOB_KEY``), so nothing already spent is re-keyed.
    ("charges", "job_account", "ALTER TABLE charges ADD COLUMN job_account TEXT"),
    # Refusals kept before their code was: counted under no code.
    ("refusals", "code", "ALTER TABLE refusals ADD COLUMN code TEXT"),
    # Charges made before the privacy unit was a choice were all per record (NULL).
    ("charges", "unit", "ALTER TABLE charges ADD COLUMN unit TEXT"),
)
_JOB_KEY = "COALESCE(job_account, 'run:' || run)"
_KEEP_JOB_ACCOUNT = """
CREATE TRIGGER IF NOT EXISTS charges_keep_their_job BEFORE UPDATE OF job_account ON charges
BEGIN SELECT RAISE(ABORT, 'privacy charges are append-only'); END;
CREATE TRIGGER IF NOT EXISTS charges_keep_their_unit BEFORE UPDATE OF unit ON charges
BEGIN SELECT RAISE(ABORT, 'privacy charges are append-only'); END;
"""
_UNIT = "COALESCE(unit, 'record')"


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
    job_account: str
    unit: str = "record"  # the privacy unit the charge is per (PrivacyUnit's value)


@dataclass(frozen=True)
class Account:
    """One budget account: an operator's dataset (name and file) from one opening on."""

    id: str
    name: str
    path: str
    generation: int
    opened_at: str
    reason: str | None


@dataclass(frozen=True)
class Reservation:
    """A job's hold on an account: its planned steps, live until ``expires_at`` (Unix time)."""

    job_account: str
    dataset: str
    planned: History
    delta: float
    accountant: str
    reserved_at: str
    expires_at: float


@dataclass(frozen=True)
class Held:
    """What the live reservations hold on an account, seen from one job."""

    others: History  # every other job's planned steps still to come, as if spent
    own: bool  # whether this job holds a live reservation itself


def _reservation(r: Any) -> Reservation:
    planned = tuple((float(z), float(q), int(n)) for z, q, n in json.loads(r[2]))
    return Reservation(r[0], r[1], planned, float(r[3]), r[4], r[5], float(r[6]))


def _charge(r: Any) -> Charge:
    """A ``charges`` row, in the table's column order, with its job account resolved."""
    account = r[12] if r[12] is not None else f"run:{r[1]}"
    unit = r[13] if len(r) > 13 and r[13] is not None else "record"
    return Charge(
        r[0], r[1], r[2], r[3], r[4], (r[5], r[6], r[7]), r[8], r[9], r[10], r[11], account, unit
    )


def _history(charges: list[Charge]) -> History:
    history: History = ()
    for charge in charges:
        history = compose(history, charge.step)
    return history


class BudgetStore:
    """Append-only ledger of a node's charges and refusals (SQLite, synchronous commits)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self._set_up()
        except sqlite3.DatabaseError as exc:
            fix = (
                "another process has held it for 30 s; stop that process, then retry"
                if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # busy past the timeout
                else "restore the node's state folder from its backup; without its record of"
                " spend the node cannot train"
            )
            raise ConfigError(
                f"{path}: the node's budget store cannot be opened ({exc}); fix: {fix}"
            ) from exc

    def _set_up(self) -> None:
        """Create or migrate the store's tables; every opener does, one at a time."""
        with (
            self._file_lock("store"),  # openers set up the file in turn (see below)
            closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db,
        ):
            # WAL is the file's mode from here on. Switched per connection instead, a switch
            # that meets another opener's read fails at once ("database is locked"): SQLite
            # gives no busy wait to a connection that holds a read and asks for more.
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)  # idempotent; runs in its own transaction
            db.execute("BEGIN IMMEDIATE")  # two processes opening one store migrate in turn
            try:
                for table, column, alter in _MIGRATIONS:
                    columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                    if column not in columns:
                        db.execute(alter)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            db.executescript(_KEEP_JOB_ACCOUNT)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before training starts
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def noise_for(
        self, *, job_account: str, dataset: str, derive: Callable[[], float], phase: str = ""
    ) -> float:
        """The noise multiplier fixed for the signed job ``job_account`` on ``dataset``.

        Fixed at the job's first round on this node, whatever Flower run asks later (a replay
        or a restarted coordinator gets the same). A job with a warm start has two mechanisms,
        so two multipliers: ``phase`` names the warm start's; training's has phase "".
        """
        with self._db() as db:
            row = db.execute(
                "SELECT noise_multiplier FROM job_noise"
                " WHERE job_account = ? AND dataset = ? AND phase = ?",
                (job_account, dataset, phase),
            ).fetchone()
            if row is not None:
                return float(row[0])
            noise = derive()
            db.execute(
                "INSERT INTO job_noise VALUES (?, ?, ?, ?, ?)",
                (job_account, dataset, phase, noise, now()),
            )
            return noise

    @contextmanager
    def job_lock(self, job_account: str) -> Iterator[None]:
        """Hold the signed job's lock: this node works on one message of a job at a time.

        Flower's executor may run two messages of one run concurrently (a coordinator can send
        round 1 twice); under this lock the second sees the first's charge, so a once-per-job
        step such as a release cannot run twice. Other jobs are not held up.
        """
        if not re.fullmatch(r"[0-9a-f]{64}", job_account):
            raise ValueError("a job account is the signed job's SHA-256")
        with self._file_lock(job_account):
            yield

    @contextmanager
    def node_lock(self) -> Iterator[None]:
        """Hold the node's training lock: one round trains on this node at a time.

        Two jobs' rounds never train at once (memory, and each round's wall time stays its
        own); the budget needs no such lock, its check and charge are one transaction.
        """
        with self._file_lock("node"):
            yield

    @contextmanager
    def _file_lock(self, name: str) -> Iterator[None]:
        """An exclusive lock shared by every process and thread that opens this store."""
        folder = self.path.parent / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"{name}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _account_key(self, db: sqlite3.Connection) -> bytes:
        row = db.execute("SELECT key FROM secret WHERE only = 1").fetchone()
        if row is not None:
            return bytes(row[0])
        key = secrets.token_bytes(32)
        db.execute("INSERT INTO secret VALUES (1, ?)", (key,))
        return key

    def _account_id(self, db: sqlite3.Connection, name: str, path: str, generation: int) -> str:
        message = b"\x00".join(
            (_ACCOUNT_DOMAIN, name.encode(), path.encode(), str(generation).encode())
        )
        return hmac.new(self._account_key(db), message, hashlib.sha256).hexdigest()

    def launcher_account(self, account: str, *, launcher: str) -> str:
        """The name ``launcher``'s jobs see for ``account``: unlinkable across launchers.

        An HMAC under this store's secret of the account and the launcher's public key: the
        same for every job one launcher signs (its coordinator can follow its own spend on
        the dataset), unrelated between launchers (two coordinators cannot tell that they
        trained on the same data). Only the node, holding the secret, maps it back.
        """
        message = b"\x00".join((_LAUNCHER_DOMAIN, account.encode(), launcher.encode()))
        with self._db() as db:
            return hmac.new(self._account_key(db), message, hashlib.sha256).hexdigest()

    def job_charge(self, charge_id: int) -> int:
        """The position of charge ``charge_id`` among its signed job's charges: 1, 2, ...

        Counted over every run of the job on this node, so it tells the job's coordinator
        nothing about other jobs or datasets (the store's own ids are node-wide).
        """
        with self._db() as db:
            row = db.execute(
                f"SELECT COUNT(*) FROM charges WHERE {_JOB_KEY} ="
                f" (SELECT {_JOB_KEY} FROM charges WHERE id = ?) AND id <= ?",
                (charge_id, charge_id),
            ).fetchone()
        if not row or not row[0]:
            raise ValueError(f"no charge {charge_id} in the budget store")
        return int(row[0])

    def _current(self, db: sqlite3.Connection, name: str, path: str) -> Account | None:
        row = db.execute(
            "SELECT * FROM accounts WHERE name = ? AND path = ? ORDER BY generation DESC",
            (name, path),
        ).fetchone()
        return None if row is None else Account(*row)

    def _open(
        self, db: sqlite3.Connection, name: str, path: str, generation: int, reason: str | None
    ) -> Account:
        account = Account(
            self._account_id(db, name, path, generation), name, path, generation, now(), reason
        )
        db.execute(
            "INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?)",
            (account.id, name, path, generation, account.opened_at, reason),
        )
        return account

    def account(self, name: str, path: Path) -> str:
        """The current account of the operator's dataset ``name`` in file ``path``."""
        where = str(path.resolve())
        with self._db() as db:
            current = self._current(db, name, where)
            return (current or self._open(db, name, where, 0, None)).id

    def reset(self, name: str, path: Path, *, reason: str) -> tuple[str, str]:
        """Open a new account for the dataset: the operator's explicit act; (old, new) ids.

        The old account's charges stay, unchanged and still counted against it; only rounds
        from now on charge the new one. The caller writes the reset to the node's ledger.
        """
        if not reason.strip():
            raise ValueError("a budget reset needs a reason")
        where = str(path.resolve())
        with self._db() as db:
            current = self._current(db, name, where) or self._open(db, name, where, 0, None)
            new = self._open(db, name, where, current.generation + 1, reason.strip())
            return current.id, new.id

    def accounts(self) -> list[Account]:
        """Every account ever opened, oldest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM accounts ORDER BY opened_at, generation").fetchall()
        return [Account(*row) for row in rows]

    @staticmethod
    def _charges(
        db: sqlite3.Connection, dataset: str | None, job_account: str | None
    ) -> list[Charge]:
        query = (
            "SELECT * FROM charges WHERE (? IS NULL OR dataset = ?)"
            f" AND (? IS NULL OR {_JOB_KEY} = ?)"
        )
        rows = db.execute(
            query + " ORDER BY id", (dataset, dataset, job_account, job_account)
        ).fetchall()
        return [_charge(row) for row in rows]

    def charges(
        self, dataset: str | None = None, *, job_account: str | None = None
    ) -> list[Charge]:
        """Charges in the order they were made, optionally for one account and one signed job."""
        with self._db() as db:
            return self._charges(db, dataset, job_account)

    def units(self, dataset: str) -> set[str]:
        """The privacy units ``dataset``'s charges are per (one at most, or none yet)."""
        with self._db() as db:
            rows = db.execute(
                f"SELECT DISTINCT {_UNIT} FROM charges WHERE dataset = ?", (dataset,)
            ).fetchall()
        return {str(row[0]) for row in rows}

    def history(self, dataset: str, *, job_account: str | None = None) -> History:
        """Opacus-format history of every charge on ``dataset`` (optionally one signed job)."""
        return _history(self.charges(dataset, job_account=job_account))

    def charge_within(
        self,
        *,
        run: str,
        job: str,
        job_account: str,
        server_round: int,
        dataset: str,
        step: PrivacyStep,
        delta: float,
        accountant: str,
        planned: History,
        hold_s: float,
        check: Callable[[History, History, Held], T],
        unit: str = "record",
    ) -> tuple[int, T]:
        """Check and charge a round in one transaction; call before the first training step.

        ``check(job_history, account_history, held)`` sees every charge committed so far (the
        signed job's, under every Flower run, and the dataset's) and every live reservation,
        and raises to refuse; nothing is written then. While it runs, this transaction holds
        SQLite's write lock, so no other round on this node can charge or reserve in between.
        The charge then renews the job's reservation of ``planned`` for ``hold_s`` seconds.
        Returns the charge's id and what ``check`` returned. ``unit`` is the privacy unit the
        charge is per; an account's charges all share one (:meth:`units`), checked here too.
        """
        noise, rate, steps = step
        with self._db() as db:
            other = db.execute(
                f"SELECT {_UNIT} FROM charges WHERE dataset = ? AND {_UNIT} != ? LIMIT 1",
                (dataset, unit),
            ).fetchone()
            if other is not None:
                raise ValueError(f"the account holds charges per {other[0]}, not per {unit}")
            checked = self._check_and_hold(
                db, job_account, dataset, planned, delta, accountant, hold_s, check
            )
            cursor = db.execute(
                "INSERT INTO charges (run, job, round, dataset, noise_multiplier, sample_rate,"
                " steps, delta, accountant, charged_at, job_account, unit)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run,
                    job,
                    server_round,
                    dataset,
                    noise,
                    rate,
                    steps,
                    delta,
                    accountant,
                    now(),
                    job_account,
                    unit,
                ),
            )
            return int(cursor.lastrowid or 0), checked

    def reserve_within(
        self,
        *,
        job_account: str,
        dataset: str,
        planned: History,
        delta: float,
        accountant: str,
        hold_s: float,
        check: Callable[[History, History, Held], T],
    ) -> T:
        """Check that the job fits and hold ``planned`` for it, in one transaction; no charge.

        ``check`` is :meth:`charge_within`'s; it raises to refuse, and nothing is held then.
        """
        with self._db() as db:
            return self._check_and_hold(
                db, job_account, dataset, planned, delta, accountant, hold_s, check
            )

    def _check_and_hold(
        self,
        db: sqlite3.Connection,
        job_account: str,
        dataset: str,
        planned: History,
        delta: float,
        accountant: str,
        hold_s: float,
        check: Callable[[History, History, Held], T],
    ) -> T:
        """Run ``check`` on what is committed and held, then (re)new the job's hold."""
        checked = check(
            _history(self._charges(db, dataset, job_account)),
            _history(self._charges(db, dataset, None)),
            self._held(db, dataset, job_account),
        )
        self._hold(db, job_account, dataset, planned, delta, accountant, hold_s)
        return checked

    @staticmethod
    def _hold(
        db: sqlite3.Connection,
        job_account: str,
        dataset: str,
        planned: History,
        delta: float,
        accountant: str,
        hold_s: float,
    ) -> None:
        db.execute(
            "INSERT INTO reservations VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (job_account, dataset) DO UPDATE SET expires_at = excluded.expires_at",
            (
                job_account,
                dataset,
                json.dumps([list(step) for step in planned]),
                delta,
                accountant,
                now(),
                time.time() + hold_s,
            ),
        )

    def free(self, job_account: str) -> int:
        """Drop every hold of the signed job (it ended); how many there were.

        Only a hold goes: the job's charges stay, and a later round of it must fit whole again.
        """
        with self._db() as db:
            cursor = db.execute("DELETE FROM reservations WHERE job_account = ?", (job_account,))
            return int(cursor.rowcount)

    def still_held(self, reservation: Reservation) -> History:
        """The steps of ``reservation``'s job still to come: what it holds now."""
        with self._db() as db:
            charged = _history(self._charges(db, reservation.dataset, reservation.job_account))
        return remaining(reservation.planned, charged)

    @staticmethod
    def _live(db: sqlite3.Connection, dataset: str | None) -> list[Reservation]:
        rows = db.execute(
            "SELECT * FROM reservations WHERE (? IS NULL OR dataset = ?) AND expires_at > ?"
            " ORDER BY reserved_at, job_account",
            (dataset, dataset, time.time()),
        ).fetchall()
        return [_reservation(row) for row in rows]

    def _held(self, db: sqlite3.Connection, dataset: str, job_account: str) -> Held:
        others: History = ()
        own = False
        for reservation in self._live(db, dataset):
            if reservation.job_account == job_account:
                own = True
                continue
            charged = _history(self._charges(db, dataset, reservation.job_account))
            others = (*others, *remaining(reservation.planned, charged))
        return Held(others, own)

    def held(self, dataset: str, *, job_account: str) -> Held:
        """What the live reservations on ``dataset`` hold, seen from ``job_account``."""
        with self._db() as db:
            return self._held(db, dataset, job_account)

    def reservations(self, dataset: str | None = None) -> list[Reservation]:
        """The live reservations (on one account, or all), oldest first."""
        with self._db() as db:
            return self._live(db, dataset)

    def trained(self, charge_id: int) -> None:
        """Mark a charge's round as trained (its cost stays charged either way)."""
        with self._db() as db:
            db.execute("UPDATE charges SET trained_at = ? WHERE id = ?", (now(), charge_id))

    def refuse(
        self,
        *,
        run: str,
        job: str,
        server_round: int,
        dataset: str | None,
        reason: str,
        code: str | None = None,
    ) -> None:
        """Remember a refusal (and its code) for `residency node status` and the metrics."""
        with self._db() as db:
            db.execute(
                "INSERT INTO refusals (run, job, round, dataset, reason, refused_at, code)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run, job, server_round, dataset, reason, now(), code),
            )

    def refusal_codes(self) -> dict[str, int]:
        """How many refusals of each code ("" for those kept before codes were)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT COALESCE(code, ''), COUNT(*) FROM refusals GROUP BY 1 ORDER BY 1"
            ).fetchall()
        return {str(code): int(count) for code, count in rows}

    def refusals(self) -> list[tuple[str, str, int, str | None, str, str]]:
        """(run, job, round, dataset, reason, time) of every refusal, oldest first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT run, job, round, dataset, reason, refused_at FROM refusals ORDER BY id"
            ).fetchall()
        return [tuple(row) for row in rows]
