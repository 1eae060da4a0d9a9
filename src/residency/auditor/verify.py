"""Verify a privacy ledger without trusting its keeper or the nodes.

Checks, entry by entry: the JSON parses under the strict schema; entries are numbered
0, 1, 2... with no gap; each names the previous entry's hash; its own hash matches its content;
its keeper's signature verifies under a key from the auditor's key folder; each node record is
signed by that country's key, names the entry's run, round and country, hashes to the update
that arrived (and, in a coordinator's ledger, to the update file kept beside it), and says its
noise came from the node's OS entropy, not a seed. Every epsilon in every record is recomputed
from the recorded mechanism twice, with Opacus and with Google's dp-accounting: the two must
agree within their stated error bounds, and no record may claim less than dp-accounting's lower
bound on what its mechanism spends (:mod:`.crosscheck`). A dataset's lifetime epsilon is in the
node's own ledger (its charge entries; records before schema 5 also stated it): it is recomputed
there from every charge on the dataset and held to the dataset's budget, and a coordinator's
ledger alone cannot show it. Every problem names its entry number.
A node operator's budget resets are listed: they are legitimate, but an auditor must see each
one.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.numpy import load_file

from residency.auditor.crosscheck import CrossCheck, cross_check
from residency.common.config.kinds import AccountantKind
from residency.common.errors import ConfigError, InvalidUpdate
from residency.common.privacy.accountant import BUDGET_RTOL, History, compose, epsilon_spent
from residency.common.privacy.ledger import GENESIS, EntryKind, LedgerEntry, read_lines
from residency.common.privacy.record import NoiseSource, PrivacyRecord, open_record
from residency.common.privacy.signing import key_id, load_public
from residency.common.privacy.update_digest import update_sha256

SAME_LIBRARY_RTOL = 1e-6
"""Opacus recomputing its own number on the same parameters: equal up to float noise."""
UPDATES_DIR = "updates"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def record_sha256(body: str) -> str:
    """SHA-256 of a signed record's body: names one record, whatever update it carries."""
    return hashlib.sha256(body.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the ledger, at an entry (``None``: the ledger as a whole)."""

    entry: int | None
    what: str

    def __str__(self) -> str:
        where = "ledger" if self.entry is None else f"entry {self.entry}"
        return f"{where}: {self.what}"


@dataclass(frozen=True)
class RoundSpend:
    """One record, with the auditor's own numbers beside the node's."""

    entry: int
    run: str
    job: str
    country: str
    round: int
    averaged: bool
    record: PrivacyRecord
    epsilon_opacus: float
    epsilon_dp_accounting: float
    record_sha256: str
    epsilon_dataset: float | None = None
    """The dataset's lifetime epsilon with this round: a node ledger's charge entry states it
    (a record did before schema 5); ``None`` where neither is at hand."""


class Reset(BaseModel):
    """A node operator opened a new budget account for a dataset: its lifetime spend restarts.

    Legitimate (a new extract of the data, a decision recorded outside the ledger), but it is
    the one way a dataset's budget stops binding, so every reset is shown to the auditor with
    the operator's reason. ``entry`` is an entry number of ``ledger`` (a node's ledger, not
    necessarily the one verified). The one shape ``audit verify --json``, ``audit report``
    and its HTML and Markdown all show.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ledger: Path
    entry: int
    at: str
    country: str
    dataset: str
    old_account: str
    new_account: str
    reason: str


@dataclass(frozen=True)
class Refusal:
    """A round a node declined, in its words."""

    entry: int
    run: str
    job: str
    country: str
    round: int
    reason: str


@dataclass
class Verification:
    """Everything ``audit verify`` found; ``ok`` when there is no problem."""

    ledger: Path
    entries: int = 0
    keeper: str | None = None
    head: str | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    spends: list[RoundSpend] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    resets: list[Reset] = field(default_factory=list)
    unconfirmed: set[tuple[str, str, int]] = field(default_factory=set)
    """(run, country, round) the coordinator sent but got no valid signed record for."""
    runs: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def flag(self, entry: int | None, what: str) -> None:
        """Record a problem."""
        self.problems.append(Problem(entry, what))

    def note(self, entry: int | None, what: str) -> None:
        """Record something an auditor should know that is not a fault."""
        self.notes.append(Problem(entry, what))


def load_keys(folder: Path) -> dict[str, str]:
    """Public key (hex) to label, from every ``*.pub`` in ``folder``: ``DE.pub`` is DE's."""
    if not folder.is_dir():
        raise ConfigError(f"--keys: {folder}: not a folder; fix: pass the folder of .pub files")
    keys: dict[str, str] = {}
    for path in sorted(folder.glob("*.pub")):
        keys[load_public(path)] = path.name.removesuffix(".pub")
    if not keys:
        raise ConfigError(f"--keys: {folder}: no .pub files; fix: add each party's public key")
    return keys


def _belongs_to(label: str, country: str) -> bool:
    return label == country or label.startswith(f"{country}-")


@lru_cache(maxsize=4096)
def _opacus(history: History, delta: float, kind: AccountantKind) -> float:
    return epsilon_spent(history, delta=delta, kind=kind)


@lru_cache(maxsize=4096)
def _google(history: History, delta: float, kind: AccountantKind) -> CrossCheck:
    return cross_check(history, delta=delta, kind=kind)


def without_last(history: History, step: tuple[float, float, int]) -> History:
    """``history`` before ``step`` was composed onto it (inverse of ``compose``)."""
    z, q, n = step
    if not history or history[-1][0] != z or history[-1][1] != q or history[-1][2] < n:
        raise ValueError("history does not end with this round's step")
    last = history[-1]
    return history[:-1] if last[2] == n else (*history[:-1], (z, q, last[2] - n))


def _close(a: float, b: float, rtol: float) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-9)


class _Verifier:
    def __init__(self, result: Verification, keys: dict[str, str]) -> None:
        self.result = result
        self.keys = keys
        self.updates = result.ledger.parent / UPDATES_DIR
        self.seen_rounds: set[tuple[str, str, int]] = set()
        self.last_history: dict[tuple[str, str, str], History] = {}
        self.charges: dict[str, History] = defaultdict(tuple)
        self.lifetime_at: dict[int, History] = {}
        self.units: dict[str, str] = {}  # each dataset account's privacy unit, by its first charge
        self.job_charges: dict[tuple[str, int], _ChargeEntry] = {}
        self.charge_entries = 0
        self.record_steps: dict[tuple[str, str], History] = defaultdict(tuple)
        self.record_entries: list[int] = []

    def entries(self, lines: list[str]) -> None:
        result = self.result
        prev = GENESIS
        for position, line in enumerate(lines):
            try:
                entry = LedgerEntry.model_validate_json(line)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"]) or "line"
                result.flag(position, f"not a valid ledger entry ({where}: {err['msg']})")
                prev = ""  # the next link cannot be checked against an unreadable entry
                continue
            self.entry(position, entry, prev)
            prev = entry.hash
        result.entries = len(lines)
        result.head = prev or None

    def entry(self, position: int, entry: LedgerEntry, prev: str) -> None:
        result = self.result
        if entry.index != position:
            result.flag(
                position,
                f"numbered {entry.index}: entries were removed, inserted or reordered",
            )
        if prev and entry.prev != prev:
            result.flag(position, "previous-hash link broken: an entry before it was changed")
        if entry.body.digest() != entry.hash:
            result.flag(position, "content does not match its hash: the entry was edited")
        if not entry.signature_valid():
            result.flag(position, "keeper signature does not verify")
        if result.keeper is None:
            result.keeper = entry.signer
        if entry.signer != result.keeper:
            result.flag(position, f"signed by key {key_id(entry.signer)}, not the ledger's keeper")
        if entry.signer not in self.keys:
            result.flag(position, f"keeper key {key_id(entry.signer)} is not in the key folder")
        if entry.kind is EntryKind.RECORD:
            self.record(position, entry)
        elif entry.kind is EntryKind.CHARGE:
            self.charge(position, entry)
        elif entry.kind is EntryKind.BUDGET_RESET:
            self.reset(position, entry)
        elif entry.kind is EntryKind.UNCONFIRMED:
            result.unconfirmed.add((entry.run or "", entry.country or "", entry.round or 0))
        elif entry.kind is EntryKind.REFUSAL:
            result.refusals.append(
                Refusal(
                    position,
                    entry.run or "",
                    entry.job or "",
                    entry.country or "",
                    entry.round or 0,
                    entry.reason or "",
                )
            )
        elif entry.kind is EntryKind.RUN_STARTED:
            result.runs[entry.run or ""] = {"job": entry.job, "started": entry.at, **entry.detail}
        elif entry.kind is EntryKind.RUN_FINISHED:
            run = result.runs.setdefault(entry.run or "", {"job": entry.job})
            run.update(finished=entry.at, **entry.detail)

    def charge(self, position: int, entry: LedgerEntry) -> None:
        detail = entry.detail
        try:
            dataset = str(detail["dataset"])
            step = (
                float(detail["noise_multiplier"] or 0.0),
                float(detail["sample_rate"] or 0.0),
                int(detail["steps"] or 0),
            )
            charge = int(detail["charge"] or 0)
        except (KeyError, TypeError, ValueError):
            self.result.flag(position, "charge entry lacks its mechanism")
            return
        self.charge_entries += 1
        unit = str(detail.get("privacy_unit") or "record")  # charges before units: records
        first = self.units.setdefault(dataset, unit)
        if unit != first:
            self.result.flag(
                position,
                f"dataset account {dataset[:12]} charged per {unit} after charges per {first}: "
                "epsilons of two privacy units do not compose (a reset opens a new account)",
            )
        self.charges[dataset] = compose(self.charges[dataset], step)
        self.lifetime_at[charge] = self.charges[dataset]
        job, job_charge = detail.get("job_sha256"), detail.get("job_charge")
        if "epsilon_dataset" not in detail:
            return  # written before charge entries kept the dataset's lifetime epsilon
        try:
            stated = float(detail["epsilon_dataset"] or 0.0)
            budget = float(detail["budget_epsilon"] or 0.0)
            kind = AccountantKind(str(detail["accountant"]))
            delta = float(detail["delta"] or 0.0)
            recomputed = _opacus(self.charges[dataset], delta, kind)
        except (KeyError, TypeError, ValueError):
            self.result.flag(position, "charge entry lacks its dataset budget or accountant")
            return
        if not _close(stated, recomputed, SAME_LIBRARY_RTOL):
            self.result.flag(
                position,
                f"dataset epsilon {stated:.6g} charged, the charges in this ledger give "
                f"{recomputed:.6g}",
            )
        if recomputed > budget * (1 + BUDGET_RTOL):
            self.result.flag(
                position, f"dataset epsilon {recomputed:.4g} exceeds its budget {budget:.4g}"
            )
        if isinstance(job, str) and isinstance(job_charge, int):
            self.job_charges[(job, job_charge)] = _ChargeEntry(
                position, step, str(detail.get("dataset_account")), stated, unit
            )

    def reset(self, position: int, entry: LedgerEntry) -> None:
        detail = entry.detail
        dataset, old, new = (detail.get(k) for k in ("dataset", "old_account", "new_account"))
        if (
            not isinstance(dataset, str)
            or not dataset
            or not isinstance(old, str)
            or not isinstance(new, str)
            or not _HEX64.fullmatch(old)
            or not _HEX64.fullmatch(new)
            or not entry.country
        ):
            self.result.flag(position, "budget-reset entry lacks its country, dataset or accounts")
            return
        if old == new:
            self.result.flag(position, "budget-reset entry names the same old and new account")
        self.result.resets.append(
            Reset(
                ledger=self.result.ledger,
                entry=position,
                at=entry.at,
                country=entry.country,
                dataset=dataset,
                old_account=old,
                new_account=new,
                reason=entry.reason or "",
            )
        )

    def record(self, position: int, entry: LedgerEntry) -> None:
        result = self.result
        if entry.record is None:
            result.flag(position, "record entry without a record")
            return
        self.record_entries.append(position)
        try:
            record = open_record(entry.record)
        except InvalidUpdate as exc:
            result.flag(position, f"node record rejected: {exc}")
            return
        label = self.keys.get(record.key)
        if label is None:
            result.flag(position, f"record signed by key {key_id(record.key)}, not in key folder")
        elif not _belongs_to(label, record.country):
            result.flag(position, f"record for {record.country} signed by {label}'s key")
        for name, value in (("run", entry.run), ("round", entry.round), ("country", entry.country)):
            if getattr(record, name) != value:
                result.flag(position, f"entry says {name} {value!r}, the signed record another")
        if entry.received_sha256 != record.update_sha256:
            result.flag(position, "update received differs from the update the node signed")
        if record.noise_source is NoiseSource.OPERATOR_SEED:
            result.flag(
                position,
                f"{record.country} round {record.round} is not differentially private: its "
                "noise and batches were reproducible from a seed in the operator's node.toml "
                "(tests and benchmarks only)",
            )
        self.mechanism(position, record)
        self.update_file(position, entry)
        replay = (record.run, record.country, record.round)
        if replay in self.seen_rounds:
            result.flag(position, f"second record for {record.country} round {record.round}")
        self.seen_rounds.add(replay)
        self.epsilons(position, entry, record, record_sha256(entry.record.body))

    def mechanism(self, position: int, record: PrivacyRecord) -> None:
        """The node's signed checks that its DP mechanism ran as the record says (schema 4)."""
        result, checks = self.result, record.mechanism
        where = f"{record.country} round {record.round}"
        if checks is None:
            if record.schema_version >= 4:
                result.flag(position, f"{where}: the record signs no check that DP ran")
            return
        if checks.steps != record.steps:
            result.flag(
                position, f"{where}: {checks.steps} noisy steps checked, {record.steps} recorded"
            )
        if checks.clipped_batches != checks.batches:
            result.flag(
                position,
                f"{where}: {checks.batches - checks.clipped_batches} of {checks.batches} "
                "batches not checked as clipped",
            )
        expected = record.noise_multiplier * record.max_grad_norm
        if not _close(checks.noise_std, expected, SAME_LIBRARY_RTOL):
            result.flag(
                position,
                f"{where}: noise std {checks.noise_std:.6g} checked, the record's "
                f"noise_multiplier x max_grad_norm is {expected:.6g}",
            )

    def update_file(self, position: int, entry: LedgerEntry) -> None:
        if not self.updates.is_dir() or entry.received_sha256 is None:
            return  # node ledgers keep no updates; a coordinator's missing folder: finish()
        path = self.updates / f"{entry.received_sha256}.safetensors"
        if not path.is_file():
            self.result.flag(position, f"update file {path.name} is missing")
            return
        try:
            digest = update_sha256(load_file(str(path)))
        except Exception as exc:  # a corrupt file in any way is the same finding
            self.result.flag(position, f"update file {path.name} unreadable ({exc})")
            return
        if digest != entry.received_sha256:
            self.result.flag(position, f"update file {path.name} does not hash to its name")

    def epsilons(
        self, position: int, entry: LedgerEntry, record: PrivacyRecord, signed_sha256: str
    ) -> None:
        result = self.result
        kind, delta, history = record.accountant, record.delta, record.run_history
        opacus = _opacus(history, delta, kind)
        google = _google(history, delta, kind)
        if not _close(record.epsilon, opacus, SAME_LIBRARY_RTOL):
            result.flag(
                position, f"epsilon {record.epsilon:.6g} recorded, Opacus gives {opacus:.6g}"
            )
        for problem in google.problems(record.epsilon):
            result.flag(position, problem)
        try:
            before = without_last(history, record.step)
        except ValueError:
            result.flag(position, "the run's history does not end with this round's mechanism")
            before = history
        round_eps = opacus - _opacus(before, delta, kind)
        if not _close(record.epsilon_round, round_eps, SAME_LIBRARY_RTOL) and before != history:
            result.flag(
                position,
                f"round epsilon {record.epsilon_round:.6g} recorded, Opacus gives {round_eps:.6g}",
            )
        if record.epsilon > record.target_epsilon * (1 + BUDGET_RTOL):
            result.flag(position, f"epsilon {record.epsilon:.4g} exceeds the job's target")
        lifetime_limit = record.budget_epsilon * (1 + BUDGET_RTOL)
        if record.epsilon_dataset is not None and record.epsilon_dataset > lifetime_limit:
            result.flag(
                position,
                f"dataset epsilon {record.epsilon_dataset:.4g} exceeds its budget "
                f"{record.budget_epsilon:.4g}",
            )
        self.continuity(position, record, before)
        lifetime = self.lifetime(position, record)
        averaged = entry.detail.get("averaged", True)
        result.spends.append(
            RoundSpend(
                position,
                record.run,
                record.job,
                record.country,
                record.round,
                bool(averaged),
                record,
                opacus,
                google.epsilon,
                signed_sha256,
                lifetime,
            )
        )

    def continuity(self, position: int, record: PrivacyRecord, before: History) -> None:
        """A job's records must extend one another; extra steps mean unrecorded charges.

        A job is its signed hash (every run that carried it, a replay or a resumed job), or
        its run for records older than signed jobs.
        """
        key = (record.job_sha256 or record.run, record.country, record.dataset)
        previous = self.last_history.get(key, ())
        self.last_history[key] = record.run_history
        if before == previous:
            return
        if before[: len(previous)] == previous or _steps(before) > _steps(previous):
            self.result.note(
                position,
                f"{record.country} round {record.round}: {_steps(before) - _steps(previous)} "
                "steps charged without a record here (a crashed round, or entries missing)",
            )
        else:
            self.result.flag(
                position, "the run's history contradicts the node's earlier records in this run"
            )

    def lifetime(self, position: int, record: PrivacyRecord) -> float | None:
        """The dataset's lifetime epsilon against what this ledger shows was spent on it.

        Returns that epsilon where this ledger shows it: the record's own before schema 5,
        the node's charge entry for it from schema 5 on (the record no longer says).
        """
        if record.epsilon_dataset is None:
            return self.charged(position, record)
        kind, delta = record.accountant, record.delta
        own = self.lifetime_at.get(record.charge)
        if own is not None:  # a node's own ledger: every charge is here
            recomputed = _opacus(own, delta, kind)
            if not _close(record.epsilon_dataset, recomputed, SAME_LIBRARY_RTOL):
                self.result.flag(
                    position,
                    f"dataset epsilon {record.epsilon_dataset:.6g} recorded, the charges in "
                    f"this ledger give {recomputed:.6g}",
                )
            return record.epsilon_dataset
        account = (record.key, record.dataset)  # each node accounts for its own copy of a dataset
        self.record_steps[account] = compose(self.record_steps[account], record.step)
        floor = _opacus(self.record_steps[account], delta, kind)
        if record.epsilon_dataset < floor * (1 - SAME_LIBRARY_RTOL) - 1e-9:
            self.result.flag(
                position,
                f"dataset epsilon {record.epsilon_dataset:.6g} recorded, but this ledger's "
                f"records on it alone give {floor:.6g}",
            )
        return record.epsilon_dataset

    def charged(self, position: int, record: PrivacyRecord) -> float | None:
        """A schema-5 record's charge entry in a node's ledger: (job, n-th charge of the job).

        The entry must charge the record's mechanism on the account the record names (the
        launcher's pseudonym of it); its lifetime epsilon was checked when it was read. In a
        coordinator's ledger there is no charge entry: the lifetime is not known there.
        """
        if not self.charge_entries:
            return None
        job = record.job_sha256 or f"run:{record.run}"
        charged = self.job_charges.get((job, record.charge))
        where = f"{record.country} round {record.round}"
        if charged is None:
            self.result.flag(
                position, f"{where}: no charge entry for the job's charge {record.charge}"
            )
            return None
        if charged.step != record.step or charged.dataset_account != record.dataset:
            self.result.flag(
                position,
                f"{where}: charge entry {charged.entry} charged another mechanism or dataset",
            )
        if charged.unit != record.privacy_unit.value:
            self.result.flag(
                position,
                f"{where}: charge entry {charged.entry} charged per {charged.unit}, the record "
                f"states ε per {record.privacy_unit.value}",
            )
        return charged.epsilon_dataset

    def finish(self) -> None:
        result = self.result
        for run, info in result.runs.items():
            if "finished" not in info:
                result.flag(
                    None, f"run {run} has no run-finished entry (truncated, or still running)"
                )
        coordinator = any("started" in info for info in result.runs.values())
        if coordinator and self.record_entries and not self.updates.is_dir():
            result.flag(
                None,
                f"{len(self.record_entries)} record entries (the first is entry "
                f"{self.record_entries[0]}) but no {UPDATES_DIR}/ folder beside this "
                "coordinator ledger: the updates that were averaged cannot be checked against "
                "the hashes the nodes signed",
            )
        if coordinator:
            for reset in result.resets:
                result.flag(reset.entry, "budget-reset entry in a coordinator's ledger")


@dataclass(frozen=True)
class _ChargeEntry:
    """What a node's charge entry says of one round, for the record that names it."""

    entry: int
    step: tuple[float, float, int]
    dataset_account: str
    epsilon_dataset: float
    unit: str = "record"


def _steps(history: Iterable[tuple[float, float, int]]) -> int:
    return sum(n for _, _, n in history)


def verify_ledger(
    ledger: Path,
    keys: dict[str, str],
    *,
    since: tuple[int, str] | None = None,
    node_ledgers: Iterable[Path] = (),
) -> Verification:
    """Check ``ledger`` against the auditor's ``keys``; see the module docstring.

    ``since`` is an (entry, hash) pair from an earlier verification: the ledger must still
    hold that entry unchanged, which catches truncation and rewriting. Each node ledger is
    verified too, and every record in it must be in ``ledger`` (a node's own copy proves
    what a truncated or pruned coordinator ledger lost).
    """
    if not ledger.is_file():
        raise ConfigError(f"{ledger}: ledger not found; fix: pass the ledger.jsonl file")
    result = Verification(ledger)
    lines = read_lines(ledger)
    if not lines:
        result.flag(None, "the ledger is empty")
        return result
    verifier = _Verifier(result, keys)
    verifier.entries(lines)
    verifier.finish()
    if since is not None:
        _check_since(result, lines, since)
    for path in node_ledgers:
        _cross_check(result, keys, path)
    unstated = [spend.entry for spend in result.spends if spend.epsilon_dataset is None]
    if unstated:
        result.note(
            unstated[0],
            f"{len(unstated)} records (the first at entry {unstated[0]}) do not state their "
            "dataset's lifetime epsilon (schema 5): each node keeps it in its own ledger; "
            "pass that node's ledger (--node-ledger) to check it",
        )
    return result


def _check_since(result: Verification, lines: list[str], since: tuple[int, str]) -> None:
    index, digest = since
    if index >= len(lines):
        result.flag(index, f"missing: the ledger now ends at entry {len(lines) - 1} (truncated)")
        return
    try:
        entry = LedgerEntry.model_validate_json(lines[index])
    except ValidationError:
        return  # already reported
    if entry.hash != digest:
        result.flag(
            index, "differs from the entry seen earlier (--since): the ledger was rewritten"
        )


def _spend_key(spend: RoundSpend) -> tuple[str, int, str, str]:
    """What ties a node's copy of a record to the coordinator's: the update alone does not."""
    return (spend.run, spend.round, spend.country, spend.record_sha256)


def _cross_check(result: Verification, keys: dict[str, str], path: Path) -> None:
    """Every record in the node's ledger must be in ``result``'s, the very same signed bytes.

    Matched on run, round, country and the hash of the signed record: an update hash alone
    would let one kept entry stand for another round that sent bit-identical arrays. The
    node's budget resets join ``result``'s, as the coordinator never sees them.
    """
    node = verify_ledger(path, keys)
    for problem in node.problems:
        result.flag(problem.entry, f"node ledger {path.name}: {problem.what}")
    result.resets.extend(node.resets)
    here = {_spend_key(spend): n for n, spend in enumerate(result.spends)}
    for spend in node.spends:
        if _spend_key(spend) in here:
            mine = here[_spend_key(spend)]
            if result.spends[mine].epsilon_dataset is None:  # the node's ledger states it
                result.spends[mine] = replace(
                    result.spends[mine], epsilon_dataset=spend.epsilon_dataset
                )
            continue
        what = (
            f"{spend.country} round {spend.round} of run {spend.run} (entry {spend.entry} of "
            f"{path}) is missing from this ledger"
        )
        status = result.runs.get(spend.run, {}).get("status")
        if (spend.run, spend.country, spend.round) in result.unconfirmed:
            result.note(
                None,
                f"{what}: the coordinator recorded the round as unconfirmed (no valid reply in "
                "time); the node's charge is real and counts for the country",
            )
        elif status in ("stopped", "failed", "resumed"):
            result.note(None, f"{what}: the run was {status} before the reply arrived")
        else:
            result.flag(None, f"{what}: deleted, truncated, or never delivered")
