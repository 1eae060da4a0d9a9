"""The node's data, read only with the schema its operator declared in ``node.toml``.

A job names columns and labels too, but the node never reads its file with them: if it did,
a job naming a label set S and a column C would fault exactly when some record has a value
outside S in C, a free and repeatable question about the data. So the node reads with its own
schema, skips every unusable record in every round whether or not others are unusable (and
counts them in its own log), and compares a job with the declared schema only
(:func:`residency.client.admission.check_operator_limits`).

The operator sees the problems where they can be fixed: ``residency node init`` and
``residency node start`` read the file with the declared schema and stop on a file that cannot
be read or has no usable record, and warn with counts and places when some are skipped.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from residency.client.node_config import NodeSettings
from residency.common.data.readers import DataScan, scan_labeled_texts
from residency.common.errors import ConfigError, DataError
from residency.common.privacy.unit import PrivacyUnit

log = logging.getLogger("residency.node")

DECLARED_LABELS = "the labels declared in node.toml"
"""How messages about a record's label name the list it should be in."""


@lru_cache(maxsize=4)
def _scan(
    path: Path,
    mtime_ns: int,
    text: str,
    label: str,
    labels: tuple[str, ...],
    person: str | None,
) -> DataScan:
    del mtime_ns  # part of the cache key only: an edited file is read again
    return scan_labeled_texts(
        path,
        text_column=text,
        label_column=label,
        labels=labels,
        label_set=DECLARED_LABELS,
        person_column=person,
    )


def _person_column(settings: NodeSettings) -> str | None:
    """The column the node groups records by, under person-level DP only."""
    return settings.person_column if settings.privacy_unit is PrivacyUnit.PERSON else None


def scan_node_data(settings: NodeSettings) -> DataScan:
    """The operator's file read with the declared schema; ``DataError`` if the file is unusable.

    Skipped records are logged (the node's own log, never a reply) on every read.
    """
    path = settings.data
    mtime = path.stat().st_mtime_ns if path.exists() else 0
    scan = _scan(
        path,
        mtime,
        settings.text_column,
        settings.label_column,
        tuple(settings.labels),
        _person_column(settings),
    )
    if scan.skipped:
        log.warning("%s: data: %s", settings.country, scan.summary())
    return scan


def check_node_data(settings: NodeSettings, *, schema_fix: str) -> DataScan:
    """Read the data as a round will; ``ConfigError`` if no round could use it.

    Args:
        settings: The node's settings (data path and declared schema).
        schema_fix: Where the operator changes the schema (the node.toml file, or the
            ``node init`` flags), named in the error's fix.

    Returns:
        The scan, whose ``skipped`` the caller shows the operator as a warning.

    Raises:
        ConfigError: The file cannot be read with the declared schema, or has no usable
            record; one line naming the file, the problem and the fix.
    """
    try:
        scan = scan_labeled_texts(
            settings.data,
            text_column=settings.text_column,
            label_column=settings.label_column,
            labels=settings.labels,
            label_set=DECLARED_LABELS,
            person_column=_person_column(settings),
        )
    except DataError as exc:
        raise ConfigError(str(exc)) from exc
    if not scan.records:
        raise ConfigError(no_records(settings, scan, schema_fix=schema_fix))
    return scan


def no_records(settings: NodeSettings, scan: DataScan, *, schema_fix: str) -> str:
    """The one-line error for a file that holds no usable record under the declared schema."""
    skipped = f" ({scan.summary()})" if scan.skipped else ""
    return (
        f"{settings.data}: no usable record with text_column {settings.text_column!r}, "
        f"label_column {settings.label_column!r}"
        + (f", person_column {person!r}" if (person := _person_column(settings)) else "")
        + f" and labels {settings.labels}{skipped}; "
        f"fix: correct the file, or the schema ({schema_fix})"
    )
