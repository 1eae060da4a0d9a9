"""``residency audit``: check what every country spent, trusting neither coordinator nor nodes.

Exit codes: 0 verified; 3 the ledger has problems (each printed with its entry number); 2 bad
input (a missing ledger or key folder). Budget resets are printed, not failed: an operator may
open a new account for a dataset, but an auditor must see every time one did.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from residency.cli.audit_report import KeysOption, LedgerArgument, NodeLedgerOption, report
from residency.cli.canary import canary
from residency.cli.common import EXIT_FAILED, EXIT_INPUT, console, err_console, fail
from residency.common.errors import ConfigError

audit_app = typer.Typer(
    help="Verify privacy ledgers, report on them, and audit a training configuration.",
    no_args_is_help=True,
)
audit_app.command()(report)
audit_app.command()(canary)


def _unit(unit: str, cap: int | None) -> str:
    """What a row's ε is per: ``record``, or ``person (≤ 10)`` with the node's cap."""
    return unit if cap is None else f"{unit} (≤ {cap})"


def parse_since(value: str | None) -> tuple[int, str] | None:
    """``N:HASH`` from an earlier ``audit verify`` (its last line prints it)."""
    if value is None:
        return None
    index, _, digest = value.partition(":")
    if not index.isdigit() or len(digest) != 64:
        raise ConfigError(
            f"--since: {value!r} is not ENTRY:HASH; fix: copy the `head` line an earlier "
            "`residency audit verify` printed"
        )
    return int(index), digest


@audit_app.command()
def verify(
    ledger: LedgerArgument,
    keys: KeysOption,
    node_ledger: NodeLedgerOption = None,
    since: Annotated[
        str | None,
        typer.Option(help="ENTRY:HASH printed by an earlier verify: proves nothing was cut."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check the chain, every signature and update hash, and recompute every epsilon twice."""
    from residency.auditor.crosscheck import AGREEMENT
    from residency.auditor.verify import load_keys, verify_ledger
    from residency.auditor.verify_report import VerifyReport
    from residency.common.privacy.signing import key_id

    try:
        known = load_keys(keys)
        result = verify_ledger(
            ledger,
            known,
            since=parse_since(since),
            node_ledgers=node_ledger or [],
        )
    except ConfigError as exc:
        raise fail(str(exc), EXIT_INPUT) from exc
    except OSError as exc:
        raise fail(
            f"{exc.filename}: cannot read ({exc.strerror}); fix: check its permissions", EXIT_INPUT
        ) from exc
    last = result.entries - 1
    if as_json:
        print(VerifyReport.of(ledger, result).model_dump_json(indent=2))
    else:
        table = Table(title=f"{ledger}: {result.entries} entries")
        for column in ("run", "country", "rounds", "ε per", "ε recorded", "ε Opacus"):
            table.add_column(
                column, justify="left" if column in ("run", "country", "ε per") else "right"
            )
        table.add_column("ε dp-accounting", justify="right")
        table.add_column("dataset ε / budget", justify="right")
        table.add_column("launcher", justify="left")
        table.add_column("DP checks", justify="right")
        latest = {(s.run, s.country): s for s in result.spends}
        rounds: dict[tuple[str, str], int] = {}
        checked: dict[tuple[str, str], int] = {}
        for spend in result.spends:
            rounds[(spend.run, spend.country)] = rounds.get((spend.run, spend.country), 0) + 1
            signed = spend.record.mechanism is not None  # a failed check is listed as a problem
            checked[(spend.run, spend.country)] = (
                checked.get((spend.run, spend.country), 0) + signed
            )
        for (run, country), spend in sorted(latest.items()):
            table.add_row(
                run,
                country,
                str(rounds[(run, country)]),
                _unit(spend.record.privacy_unit.value, spend.record.records_per_person),
                f"{spend.record.epsilon:.4f}",
                f"{spend.epsilon_opacus:.4f}",
                f"{spend.epsilon_dp_accounting:.4f}",
                "—"
                if spend.epsilon_dataset is None
                else f"{spend.epsilon_dataset:.3f} / {spend.record.budget_epsilon:g}",
                "-"
                if spend.record.launcher is None  # records before signed jobs
                else known.get(spend.record.launcher, key_id(spend.record.launcher)),
                f"{checked[(run, country)]}/{rounds[(run, country)]}",
            )
        console.print(table)
        rules = "; ".join(f"{k.value}: {v}" for k, v in AGREEMENT.items())
        console.print(
            f"keeper key {key_id(result.keeper) if result.keeper else '-'}; Opacus must match "
            f"each record to 1e-6; dp-accounting must agree with Opacus ({rules}), and no "
            "record may claim less than dp-accounting's lower bound on its mechanism's ε"
        )
        for note in result.notes:
            console.print(f"[yellow]note[/] {escape(str(note))}", highlight=False)
        for reset in result.resets:
            console.print(
                f"[cyan]budget reset[/] {escape(str(reset.ledger))} entry {reset.entry}: "
                f"{escape(reset.country)} opened a new account for dataset "
                f"{escape(repr(reset.dataset))} at {escape(reset.at)} (account "
                f"{reset.old_account[:12]} -> {reset.new_account[:12]}); reason: "
                f"{escape(repr(reset.reason))}",
                highlight=False,
                soft_wrap=True,
            )
        for problem in result.problems:
            err_console.print(f"[bold red]problem[/] {escape(str(problem))}", highlight=False)
        if result.head:
            console.print(f"head {last}:{result.head}", highlight=False)
    if not result.ok:
        if not as_json:
            err_console.print(f"[bold red]FAILED[/]: {len(result.problems)} problem(s)")
        raise typer.Exit(EXIT_FAILED)
    if not as_json:
        console.print(f"[bold green]VERIFIED[/]: {result.entries} entries, {ledger}")
