"""``residency audit report``: the auditor's report on a ledger, as HTML, JSON or Markdown.

The ledger is verified first (see ``residency audit verify``); the report is written even when
verification finds problems, which it shows first. Exit codes: 0 verified; 3 the ledger has
problems (the report is still written); 2 bad input (a missing ledger, a bad key folder, an
output that cannot be written).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from residency.auditor.report_format import ReportFormat
from residency.cli.common import EXIT_FAILED, EXIT_INPUT, console, err_console, fail
from residency.common.errors import ConfigError

LedgerArgument = Annotated[Path, typer.Argument(help="ledger.jsonl (a coordinator's or a node's).")]
KeysOption = Annotated[
    Path, typer.Option(help="Folder of public keys obtained from each party: DE.pub, ...")
]
NodeLedgerOption = Annotated[
    list[Path] | None,
    typer.Option(help="A node's own ledger; its records must all be in LEDGER (repeat)."),
]
"""What ``audit verify`` and ``audit report`` both take."""

DEFAULT_HTML = Path("audit-report.html")
"""Where an HTML report goes without ``--output``: a page is not for the terminal."""
STDOUT = Path("-")


def report(
    ledger: LedgerArgument,
    keys: KeysOption,
    node_ledger: NodeLedgerOption = None,
    fmt: Annotated[
        ReportFormat,
        typer.Option(
            "--format",
            help="html: one self-contained page (about 5 MB: plotly.js is inlined so it opens "
            "offline); json; md (Markdown).",
        ),
    ] = ReportFormat.HTML,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="File to write ('-': standard output). Default: audit-report.html in the "
            "current folder for html, standard output for json and md.",
        ),
    ] = None,
) -> None:
    """Verify LEDGER and write a report: per country, the epsilon burn-down against its budget."""
    from residency.auditor.report import render_report, verdict
    from residency.auditor.verify import load_keys, verify_ledger
    from residency.common.files import write_atomic

    try:
        result = verify_ledger(ledger, load_keys(keys), node_ledgers=node_ledger or [])
    except ConfigError as exc:
        raise fail(str(exc), EXIT_INPUT) from exc
    except OSError as exc:
        raise fail(
            f"{exc.filename}: cannot read ({exc.strerror}); fix: check its permissions",
            EXIT_INPUT,
        ) from exc
    text = render_report(result, fmt=fmt)
    target = (
        output if output is not None else (DEFAULT_HTML if fmt is ReportFormat.HTML else STDOUT)
    )
    if target == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        out = err_console  # keep standard output the report alone
        where = "standard output"
    else:
        try:
            write_atomic(target, text)
        except OSError as exc:
            raise fail(
                f"--output: {target}: cannot write ({exc.strerror}); fix: pass a writable path",
                EXIT_INPUT,
            ) from exc
        out = console
        where = str(target)
    colour = "green" if result.ok else "red"
    out.print(
        f"[bold {colour}]{verdict(len(result.problems))}[/]: {result.entries} entries, "
        f"{len(result.runs)} run(s), {len(result.spends)} record(s), "
        f"{len(result.refusals)} refusal(s), {len(result.resets)} budget reset(s); "
        f"{fmt} report: {escape(where)}",
        highlight=False,
        soft_wrap=True,
    )
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)
