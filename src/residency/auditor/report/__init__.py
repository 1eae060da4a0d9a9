"""The auditor's report on a verified ledger: HTML with burn-down charts, JSON or Markdown.

Every number comes from a ``Verification``: each node's recorded epsilon stands beside the
auditor's own recomputations (Opacus and Google's dp-accounting), and every problem the verifier
found is shown with its entry number, so the report says what was checked, not only what was
claimed; every budget reset a node operator made is listed with the operator's reason.

``model`` holds the report's data (its JSON), ``build`` makes it from a verification,
``html_page`` and ``markdown_page`` render it, with ``display`` writing each value the same way
in both, and ``render`` picks the format. The output formats are in
:mod:`residency.auditor.report_format`, apart so the CLI can name them without importing this.
"""

from __future__ import annotations

from residency.auditor.report.build import build_report, verdict
from residency.auditor.report.model import (
    CountryReport,
    Finding,
    LedgerInfo,
    PolicyRef,
    RefusalRow,
    Report,
    RoundRow,
    RunReport,
)
from residency.auditor.report.render import render_report

__all__ = [
    "CountryReport",
    "Finding",
    "LedgerInfo",
    "PolicyRef",
    "RefusalRow",
    "Report",
    "RoundRow",
    "RunReport",
    "build_report",
    "render_report",
    "verdict",
]
