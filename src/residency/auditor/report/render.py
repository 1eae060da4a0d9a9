"""``render_report``: a verification's report in the format ``audit report --format`` asks for."""

from __future__ import annotations

from residency.auditor.report.build import build_report
from residency.auditor.report.html_page import render_html
from residency.auditor.report.markdown_page import render_markdown
from residency.auditor.report_format import ReportFormat
from residency.auditor.verify import Verification


def render_report(verification: Verification, *, fmt: ReportFormat) -> str:
    """The report on ``verification`` as an HTML page, JSON document or Markdown text."""
    report = build_report(verification)
    if fmt is ReportFormat.JSON:
        return report.model_dump_json(indent=2) + "\n"
    if fmt is ReportFormat.MD:
        return render_markdown(report)
    return render_html(report)
