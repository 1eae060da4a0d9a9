"""What one unit of privacy protects: a record, or a person with all of their records.

The node operator chooses it in ``node.toml``; no job can choose or weaken it. Under
``record``, neighbouring datasets differ by one record; under ``person``, by one person and
every record of theirs, so an epsilon means "per person" and bounds what any one patient,
customer or case reveals however many records they have (:mod:`residency.client.people`).
"""

from __future__ import annotations

from enum import StrEnum


class PrivacyUnit(StrEnum):
    """The neighbouring relation a node's epsilon is stated for."""

    RECORD = "record"
    PERSON = "person"
