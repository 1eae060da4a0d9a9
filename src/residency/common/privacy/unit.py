"""What one unit of privacy protects: a record, or a person with all of their records.

The node operator chooses it in ``node.toml``; no job can choose or weaken it. Under
``record``, neighbouring datasets differ by one record; under ``person``, by one person and
every record of theirs, so an epsilon means "per person" and bounds what any one patient,
customer or case reveals however many records they have (:mod:`residency.common.privacy.people`).
"""

from __future__ import annotations

from enum import StrEnum

DEFAULT_RECORDS_PER_PERSON = 10
"""The cap ``node init --person-column`` writes unless told otherwise: a person's first 10
records count. Measured (docs/performance.md, "Person-level DP"): caps 5 to 10 scored best on
people holding 1 to 50 records; cap 1 throws most records away, and 50 lets the heaviest
people's records dominate their mean and shrinks each step."""


class PrivacyUnit(StrEnum):
    """The neighbouring relation a node's epsilon is stated for."""

    RECORD = "record"
    PERSON = "person"
