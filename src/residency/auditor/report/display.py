"""How the HTML and Markdown pages write a value, so both show the same number the same way."""

from __future__ import annotations

import math

from residency.auditor.report.model import LedgerInfo, RunReport

SHORT_HASH = 12
"""Hex digits shown of a dataset account or policy hash (the JSON keeps all 64)."""

ROUND_COLUMNS = (
    ("Round", ""),
    ("Entry", "ledger entry number"),
    ("ε round", "epsilon of this round alone, recorded"),
    ("ε run recorded", "cumulative epsilon of the run, as the node signed it"),
    ("ε Opacus", "the auditor's recomputation with Opacus"),
    ("ε dp-accounting", "the auditor's recomputation with Google's dp-accounting"),
    ("ε dataset", "the dataset's lifetime epsilon, recorded"),
    ("Budget", "the dataset's lifetime epsilon budget"),
    ("σ noise", "noise multiplier"),
    ("q sample", "Poisson sample rate"),
    ("Steps", "DP-SGD steps this round"),
    ("C clip", "max per-example gradient norm; for a prototypes release, its L2 sensitivity"),
    ("Averaged", "whether the coordinator averaged the update"),
)
"""The rounds table's columns: heading and tooltip (the HTML's and the Markdown's)."""


def eps(value: float | None) -> str:
    """An epsilon to four decimals; ``∞`` for a round with no noise, ``–`` for none."""
    if value is None:
        return "–"
    return "∞" if math.isinf(value) else f"{value:.4f}"


def num(value: float | None) -> str:
    """A setting as it was written (``8``, ``1e-05``); ``–`` for none."""
    return "–" if value is None else f"{value:g}"


def short(digest: str | None) -> str:
    """The first ``SHORT_HASH`` hex digits of a hash, enough to tell two apart by eye."""
    return "–" if not digest else digest[:SHORT_HASH]


def where(entry: int | None) -> str:
    """Where a finding is: ``entry N``, or ``ledger`` for the ledger as a whole."""
    return "ledger" if entry is None else f"entry {entry}"


def head(ledger: LedgerInfo) -> str | None:
    """``ENTRY:HASH``, as ``audit verify --since`` takes it."""
    return None if ledger.head is None else f"{ledger.head_entry}:{ledger.head}"


def count(n: int, noun: str) -> str:
    """``1 problem``, ``2 problems``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def status(run: RunReport) -> str:
    """The run's final status; a run with no end entry has none yet."""
    return run.status or "not finished"


def sample(value: float) -> str:
    """A sample rate to four significant digits."""
    return f"{value:.4g}"


def pipeline(update: str | None) -> str:
    """The run's update kind, or its phases: "prototypes+head" starts with a release."""
    if not update:
        return "–"
    release, plus, trained = update.partition("+")
    if not plus:
        return update
    return f"{update}: round 1 the {release} release, then {trained} training"
