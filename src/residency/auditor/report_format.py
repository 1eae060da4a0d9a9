"""Output formats of ``residency audit report`` (apart, so the CLI imports no accountant)."""

from __future__ import annotations

from enum import StrEnum


class ReportFormat(StrEnum):
    """Output format of ``render_report``."""

    HTML = "html"
    JSON = "json"
    MD = "md"
