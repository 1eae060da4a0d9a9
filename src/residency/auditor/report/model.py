"""The audit report's data: pydantic models whose JSON is ``--format json`` (schema version 1).

Both pages are rendered from these values alone, so the JSON holds every number they show.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from residency.auditor.verify import Reset


class _Model(BaseModel):
    # Infinite recomputed epsilons (a round with no noise) are written as JSON null.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="null")


class Finding(_Model):
    """A problem or note from the verifier; ``entry`` is ``None`` for the ledger as a whole."""

    entry: int | None
    what: str


class RoundRow(_Model):
    """One node record: its claims and the auditor's recomputed epsilons."""

    round: int
    entry: int
    epsilon_round: float
    epsilon_recorded: float
    epsilon_opacus: float
    epsilon_dp_accounting: float
    epsilon_dataset: float | None  # from a node's ledger (or a record before schema 5)
    budget_epsilon: float
    target_epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    averaged: bool
    problems: list[str]


class RefusalRow(_Model):
    """A round the node declined, with its reason verbatim."""

    round: int
    entry: int
    reason: str
    problems: list[str]


class PolicyRef(_Model):
    """The node's jurisdiction policy in force, by name and SHA-256 of its rules."""

    name: str | None
    sha256: str | None


class CountryReport(_Model):
    """One country's part in one run."""

    country: str
    rounds: list[RoundRow]
    refusals: list[RefusalRow]
    policies: list[PolicyRef]
    datasets: list[str]
    keys: list[str]
    epsilon_recorded: float | None
    epsilon_dataset: float | None
    budget_epsilon: float | None
    privacy_unit: str = "record"  # what its ε is per, from its latest signed record
    records_per_person: int | None = None

    @property
    def per(self) -> str:
        """``per record``, or ``per person (at most 10 records each)``."""
        cap = self.records_per_person
        return f"per {self.privacy_unit}" + (
            "" if cap is None else f" (at most {cap} records each)"
        )


class RunReport(_Model):
    """One run: what it asked for (its run-started entry) and each country's spend."""

    run: str
    job: str | None
    status: str | None
    started: str | None
    finished: str | None
    rounds_planned: int | None
    target_epsilon: float | None
    delta: float | None
    accountant: str | None
    dp_accounting_agreement: str | None
    update: str | None
    countries: list[CountryReport]


class LedgerInfo(_Model):
    """The ledger file and its chain."""

    path: str
    entries: int
    keeper: str | None
    keeper_key_id: str | None
    head: str | None
    head_entry: int | None


class Report(_Model):
    """The whole report; its JSON is the ``--format json`` output (see docs/audit-report.md)."""

    schema_version: Literal[1] = 1
    generator: str
    ledger: LedgerInfo
    verified: bool
    verdict: str
    problems: list[Finding]
    notes: list[Finding]
    resets: list[Reset]
    runs: list[RunReport]
