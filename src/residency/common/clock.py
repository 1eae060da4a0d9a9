"""Timestamps written into results, stores and ledgers: UTC, ISO 8601, whole seconds."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> str:
    """The current UTC time, e.g. ``2026-11-28T15:00:00+00:00``."""
    return datetime.now(UTC).isoformat(timespec="seconds")
