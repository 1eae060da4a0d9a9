"""What ``audit verify --json`` prints: the verification as one pydantic model.

A typed model, not a hand-built dict, so the JSON has one schema that code (and a reader of
this file) can rely on; budget resets are the verifier's own :class:`~.verify.Reset`, the
shape ``audit report`` shows too. Infinite recomputed epsilons (a round with no noise) are
written as JSON null, as ``audit report --json`` writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from residency.auditor.verify import Reset, RoundSpend, Verification


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="null")


class Flagged(_Model):
    """A problem: the ledger fails verification. ``entry`` None: the ledger as a whole."""

    entry: int | None
    problem: str


class Noted(_Model):
    """A note: worth an auditor's eye, not a failure."""

    entry: int | None
    note: str


class SpendRow(_Model):
    """One node record: what it claims and the auditor's two recomputed epsilons."""

    entry: int
    run: str
    country: str
    round: int
    epsilon: float
    privacy_unit: str
    records_per_person: int | None
    epsilon_opacus: float
    epsilon_dp_accounting: float
    epsilon_dataset: float | None
    budget_epsilon: float | None
    noise_source: str
    launcher: str | None
    job_sha256: str | None
    mechanism: dict[str, Any] | None

    @classmethod
    def of(cls, spend: RoundSpend) -> SpendRow:
        """The row of one verified spend."""
        record = spend.record
        return cls(
            entry=spend.entry,
            run=spend.run,
            country=spend.country,
            round=spend.round,
            epsilon=record.epsilon,
            privacy_unit=record.privacy_unit.value,
            records_per_person=record.records_per_person,
            epsilon_opacus=spend.epsilon_opacus,
            epsilon_dp_accounting=spend.epsilon_dp_accounting,
            epsilon_dataset=spend.epsilon_dataset,
            budget_epsilon=record.budget_epsilon,
            noise_source=record.noise_source.value,
            launcher=record.launcher,
            job_sha256=record.job_sha256,
            mechanism=None
            if record.mechanism is None
            else record.mechanism.model_dump(mode="json"),
        )


class VerifyReport(_Model):
    """``audit verify --json``: whether the ledger verifies, and everything it checked."""

    ledger: str
    ok: bool
    entries: int
    head: str | None  # "<last entry>:<hash>", what ``--since`` takes next time
    problems: list[Flagged]
    notes: list[Noted]
    resets: list[Reset]
    records: list[SpendRow]

    @classmethod
    def of(cls, ledger: Path, result: Verification) -> VerifyReport:
        """The report of ``result``, the verification of ``ledger`` as the auditor named it."""
        return cls(
            ledger=str(ledger),
            ok=result.ok,
            entries=result.entries,
            head=f"{result.entries - 1}:{result.head}" if result.head else None,
            problems=[Flagged(entry=p.entry, problem=p.what) for p in result.problems],
            notes=[Noted(entry=p.entry, note=p.what) for p in result.notes],
            resets=list(result.resets),
            records=[SpendRow.of(s) for s in result.spends],
        )
