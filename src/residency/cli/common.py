"""What every subcommand shares: consoles, exit codes, one-line failures, loud warnings."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from residency.common.config.job import Job

# No emoji codes: user text such as a path with ":x:" in it must print as written.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

EXIT_INPUT = 2
EXIT_FAILED = 3
EXIT_UNAVAILABLE = 4


def fail(message: str, code: int) -> typer.Exit:
    """Print ``error: MESSAGE`` on one line to stderr; the caller raises the result."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def warn_insecure(role: str) -> None:
    """The loud warning every ``--insecure`` start prints first."""
    err_console.print(
        Panel(
            f"[bold]{role} started with --insecure[/]: no TLS and no node authentication. "
            "Model updates and metrics cross the network in plain text and any machine that "
            "reaches the port can join. Use only for tests on an isolated network.",
            title="[bold red]INSECURE",
            border_style="red",
        )
    )


def default_output(job: Job) -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS`` under the current folder."""
    return Path("runs") / f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}"
