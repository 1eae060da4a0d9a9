"""``residency node``: set up and run a country's node next to its data."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from residency.cli.common import EXIT_INPUT, console, err_console, fail, warn_insecure
from residency.cli.node_watch import NodeWatch
from residency.cli.processes import Child, supervise
from residency.client.daemon import (
    INIT_SCHEMA_FLAGS,
    NodeDir,
    check_coordinator_allowed,
    daemon_env,
    executor_command,
    explain_supernode_exit,
    init_node,
    supernode_command,
)
from residency.client.node_config import NodeSettings
from residency.client.node_data import check_node_data
from residency.common.data.readers import DataScan, count_records
from residency.common.errors import ConfigError, DataError
from residency.common.privacy.public_size import far_from
from residency.common.privacy.unit import DEFAULT_RECORDS_PER_PERSON, PrivacyUnit

if TYPE_CHECKING:
    from residency.client.budget_store import BudgetStore

node_app = typer.Typer(
    help="Run a country node: its own data, budget and key; only updates leave.",
    no_args_is_help=True,
)


@node_app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="New folder for the node.")],
    country: Annotated[str, typer.Option(help="ISO 3166-1 alpha-2 code, e.g. DE.")],
    data: Annotated[Path, typer.Option(help="The node's data file (CSV, JSONL or Parquet).")],
    labels: Annotated[
        str,
        typer.Option(
            help="The data's label set, comma-separated, in the order the federation's jobs "
            "list it (e.g. pos,neg,obj)."
        ),
    ],
    budget_epsilon: Annotated[
        float, typer.Option(help="Largest target epsilon a job may use on this data.")
    ],
    delta: Annotated[float, typer.Option(help="Largest delta a job may use.")],
    text_column: Annotated[
        str, typer.Option(help="The data's column (JSONL: key) holding each text.")
    ] = "text",
    label_column: Annotated[
        str, typer.Option(help="The data's column (JSONL: key) holding each label.")
    ] = "label",
    runtime_port: Annotated[
        int, typer.Option(min=1, max=65_535, help="Loopback port for the node's executor.")
    ] = 9094,
    policy: Annotated[
        Path | None, typer.Option(help="Jurisdiction policy TOML (see docs/policies/).")
    ] = None,
    trust_launcher: Annotated[
        list[str] | None,
        typer.Option(
            help="Public key (64 hex) of a launcher whose signed jobs this node runs (repeat)."
        ),
    ] = None,
    public_records: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="The data's size as the node may tell it (public; default: the file's record "
            "count rounded to 2 significant figures).",
        ),
    ] = None,
    person_column: Annotated[
        str | None,
        typer.Option(
            help="Protect people, not records (person-level DP): the data's column holding "
            "each record's person id (patient, customer, case)."
        ),
    ] = None,
    records_per_person: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --person-column: the most records of one person a round reads "
            f"(default {DEFAULT_RECORDS_PER_PERSON}, measured best; see docs/privacy.md).",
        ),
    ] = None,
    public_people: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --person-column: the number of people as the node may tell it (public; "
            "default: the file's count of people rounded to 2 significant figures).",
        ),
    ] = None,
) -> None:
    """Create the node's key pair and node.toml (the operator's own settings).

    The data file is read with the declared schema first: a file no round could use is an
    error, and records a round would skip are counted in a warning.
    """
    try:
        made = init_node(
            folder,
            country=country.strip().upper(),
            data=data,
            labels=[label.strip() for label in labels.split(",")],
            text_column=text_column,
            label_column=label_column,
            budget_epsilon=budget_epsilon,
            delta=delta,
            runtime_port=runtime_port,
            policy=policy,
            trusted_launchers=[key.strip().lower() for key in trust_launcher or []],
            public_records=public_records,
            person_column=person_column,
            records_per_person=records_per_person,
            public_people=public_people,
        )
        _warn_skipped(check_node_data(made.load(), schema_fix=INIT_SCHEMA_FLAGS))
    except (ConfigError, DataError) as exc:
        raise fail(str(exc), EXIT_INPUT) from exc
    console.print(
        f"node {country.upper()} in {folder}: settings {made.settings_file}\n"
        f"send {made.public_key} to the coordinator (it runs `residency coordinator admit`), "
        f"then: residency node start {folder} --coordinator HOST:PORT --ca ca.pem\n"
        f"auditors verify this node's privacy records with {made.record_key}.pub "
        f"(give it to them as {country.upper()}.pub); its own ledger is {made.root / 'state'}"
        "/ledger.jsonl"
    )
    settings = made.load()
    if settings.privacy_unit is PrivacyUnit.PERSON:
        console.print(
            f'privacy_unit = "person": every ε this node spends is per person (at most '
            f"{settings.records_per_person} records each are read); public_people = "
            f"{settings.public_people} in node.toml is public and sets the sampling, the exact "
            "count of people never leaves the node. Keep it a rounded figure"
        )
    else:
        console.print(
            f"public_records = {settings.public_records} in node.toml: this size is public "
            "(it leaves the node in every record and sets the sampling); the exact count never "
            "does. Keep it a rounded figure near the data's size"
        )
    if not trust_launcher:
        console.print(
            "[yellow]no launcher trusted yet: this node refuses every job until node.toml "
            'lists one (trusted_launchers = ["<64 hex from `residency launcher init`>"])[/]'
        )


def _per(settings: NodeSettings, scan: DataScan) -> str:
    """What the node's ε is per: ``per record``, or ``per person (≤ 10 records each, ...)``.

    The count of people is the operator's to see, on this screen only.
    """
    if settings.privacy_unit is not PrivacyUnit.PERSON:
        return "per record"
    people = len(set(scan.records.people or ()))
    return (
        f"per person (≤ {settings.records_per_person} records each; {people} people, "
        f"public_people = {settings.public_people})"
    )


def _warn_skipped(scan: DataScan) -> None:
    """Show the operator, and only the operator, the records every round will skip."""
    if scan.skipped:
        err_console.print(
            f"[yellow]warning:[/] every round skips records: {escape(scan.summary())}",
            highlight=False,
            soft_wrap=True,
        )


@node_app.command()
def start(
    folder: Annotated[Path, typer.Argument(help="Node folder from `node init`.")],
    coordinator: Annotated[str, typer.Option(help="Coordinator address HOST:PORT.")],
    ca: Annotated[
        Path | None, typer.Option(help="The coordinator's ca.pem (its only trusted CA).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS, no node key (tests only).")
    ] = False,
) -> None:
    """Run the SuperNode (authenticated with the node key) and its executor until stopped."""
    where = NodeDir(folder)
    try:
        settings = where.load()
        scan = check_node_data(settings, schema_fix=str(where.settings_file))
        if ca is not None and not ca.is_file():
            raise ConfigError(f"--ca: {ca}: file not found; fix: pass the coordinator's ca.pem")
        check_coordinator_allowed(settings, None if insecure else ca)
        command = supernode_command(
            where,
            settings,
            coordinator=coordinator,
            ca=ca,
            insecure=insecure,
            supervisor_pid=os.getpid(),
        )
    except ConfigError as exc:
        raise fail(str(exc), EXIT_INPUT) from exc
    if insecure:
        warn_insecure(f"node {settings.country}")
    _warn_skipped(scan)
    _warn_if_far_from_public_size(settings)
    env = daemon_env()
    supernode_log = where.logs / "supernode.log"
    supernode_log.parent.mkdir(parents=True, exist_ok=True)
    offset = supernode_log.stat().st_size if supernode_log.exists() else 0
    console.print(
        f"node {settings.country}: connecting to {coordinator}; data {settings.data} "
        f"({len(scan.records)} usable records, labels {escape(', '.join(settings.labels))}); "
        f"budget ε={settings.budget_epsilon:g} δ≤{settings.delta:g} {_per(settings, scan)}; "
        f"logs {where.logs}; Ctrl-C stops"
    )
    if settings.metrics_address is not None:
        from residency.client.metrics import serve_metrics

        try:
            serve_metrics(settings, settings.metrics_address)
        except OSError as exc:
            raise fail(
                f"{where.settings_file}: metrics_address: {settings.metrics_address}: {exc}; "
                "fix: pick a free port, or remove the line",
                EXIT_INPUT,
            ) from exc
        console.print(
            f"node {settings.country}: metrics on http://{settings.metrics_address}/metrics"
        )
    watch = NodeWatch(settings.country, coordinator, supernode_log, settings.log, say=_say)
    outcome = supervise(
        [
            Child("supernode", command, env, supernode_log),
            Child(
                "executor",
                executor_command(settings, supervisor_pid=os.getpid()),
                env,
                where.logs / "executor.log",
            ),
        ],
        on_tick=watch.tick,
    )
    if outcome.first_exit is not None and not outcome.stopped_by_signal:
        name, code = outcome.first_exit
        if name == "supernode":
            with supernode_log.open("rb") as handle:
                handle.seek(offset)
                text = handle.read().decode("utf-8", "replace")
            reason = explain_supernode_exit(text, where, settings.country)
        else:
            reason = f"see {where.logs / 'executor.log'}"
        raise fail(f"node {settings.country}: {name} exited ({code}): {reason}", 1)
    console.print(f"node {settings.country} stopped")


_STYLES = {"info": "", "good": "green", "warn": "yellow", "error": "red"}


def _say(style: str, line: str) -> None:
    """One line of what the node is doing, timestamped (``node start``'s operator view)."""
    stamp = datetime.now().astimezone().strftime("%H:%M:%S")
    colour = _STYLES.get(style, "")
    text = escape(f"{stamp} {line}")
    console.print(f"[{colour}]{text}[/]" if colour else text, highlight=False, soft_wrap=True)


def _warn_if_far_from_public_size(settings: NodeSettings) -> None:
    """The operator's own warning; the node still starts (nothing here reaches the coordinator)."""
    try:
        records = count_records(settings.data)
    except DataError:
        return  # a job's round reports an unreadable file; it is not this check's to refuse
    if far_from(records, settings.public_records):
        console.print(
            f"[yellow]{settings.data} has {records} records, far from public_records = "
            f"{settings.public_records} in node.toml (outside [P/2, 2P]): privacy is "
            "unchanged, but training is scaled for the public size; set public_records to a "
            "rounded figure near the real count[/]"
        )


def _budget_store(settings: NodeSettings) -> BudgetStore:
    """The node's durable store; one that cannot be opened is one line and exit 2."""
    from residency.client.budget_store import STORE_FILE, BudgetStore

    try:
        return BudgetStore(settings.state / STORE_FILE)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_INPUT) from exc


@node_app.command()
def status(
    folder: Annotated[Path, typer.Argument(help="Node folder from `node init`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Privacy budget spent and left per dataset, from the node's own durable store."""
    from residency.common.config.kinds import AccountantKind
    from residency.common.privacy.accountant import epsilon_spent

    try:
        settings = NodeDir(folder).load()
    except ConfigError as exc:
        raise fail(str(exc), EXIT_INPUT) from exc
    store = _budget_store(settings)
    charges = store.charges()
    accounts = {account.id: account for account in store.accounts()}
    rows = []
    for dataset in dict.fromkeys(charge.dataset for charge in charges):
        mine = [c for c in charges if c.dataset == dataset]
        kind = AccountantKind(mine[-1].accountant)
        spent = epsilon_spent(store.history(dataset), delta=settings.delta, kind=kind)
        account = accounts.get(dataset)
        rows.append(
            {
                "dataset": dataset,
                "name": None if account is None else account.name,
                "generation": None if account is None else account.generation,
                "epsilon_spent": spent,
                "epsilon_left": max(settings.budget_epsilon - spent, 0.0),
                "budget_epsilon": settings.budget_epsilon,
                "delta": settings.delta,
                "accountant": kind.value,
                "rounds": len(mine),
                "runs": len({c.run for c in mine}),
                "untrained_charges": sum(c.trained_at is None for c in mine),
            }
        )
    refusals = [
        {"run": r[0], "job": r[1], "round": r[2], "reason": r[4], "at": r[5]}
        for r in store.refusals()
    ]
    held = []
    for reservation in store.reservations():
        still = store.still_held(reservation)
        if not still:  # its job has charged its whole plan
            continue
        held.append(
            {
                "job_sha256": reservation.job_account,
                "dataset": reservation.dataset,
                "epsilon_held": epsilon_spent(
                    still,
                    delta=reservation.delta,
                    kind=AccountantKind(reservation.accountant),
                ),
                "since": reservation.reserved_at,
                "until": datetime.fromtimestamp(reservation.expires_at, UTC).isoformat(),
            }
        )
    if as_json:
        print(
            json.dumps(
                {
                    "country": settings.country,
                    "datasets": rows,
                    "held": held,
                    "refusals": refusals,
                }
            )
        )
        return
    table = Table(title=f"node {settings.country}: privacy budget (δ={settings.delta:g})")
    for column in ("dataset", "account", "ε spent", "ε left", "budget", "rounds", "runs"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            f"{row['name']} #{row['generation']}",
            f"{str(row['dataset'])[:12]}…",
            f"{row['epsilon_spent']:.3f}",
            f"{row['epsilon_left']:.3f}",
            f"{row['budget_epsilon']:g}",
            str(row["rounds"]),
            str(row["runs"]),
        )
    console.print(table)
    for hold in held:
        console.print(
            f"held for job {str(hold['job_sha256'])[:12]}…: ε {hold['epsilon_held']:.3f} of "
            f"dataset {str(hold['dataset'])[:12]}… until {hold['until']} (its rounds still "
            "to come; other jobs cannot spend it)"
        )
    for refusal in refusals[-5:]:
        console.print(f"refused {refusal['at']}: {refusal['reason']}")
    if not rows:
        console.print("nothing spent yet")
    from residency.common.privacy.signing import key_id, load_public, public_path

    public = public_path(settings.record_key)
    if public.exists():
        console.print(
            f"records signed with key {key_id(load_public(public))} ({public}); own ledger "
            f"{settings.ledger}: check it with `residency audit verify {settings.ledger} "
            "--keys DIR`"
        )


budget_app = typer.Typer(help="The node's dataset budget accounts.", no_args_is_help=True)
node_app.add_typer(budget_app, name="budget")


@budget_app.command()
def reset(
    folder: Annotated[Path, typer.Argument(help="Node folder from `node init`.")],
    reason: Annotated[str, typer.Option(help="Why a new account is justified (signed, audited).")],
) -> None:
    """Open a new budget account for the node's dataset: an explicit, signed operator act.

    The old account keeps every charge; only later rounds charge the new one. The reset is
    appended to the node's ledger, so `residency audit verify` and `audit report` show it.
    """
    from residency.common.privacy.ledger import EntryKind, Ledger
    from residency.common.privacy.signing import load_or_create_signer

    try:
        settings = NodeDir(folder).load()
    except ConfigError as exc:
        raise fail(str(exc), EXIT_INPUT) from exc
    if not reason.strip():
        raise fail("--reason: empty; fix: say why this dataset gets a new account", EXIT_INPUT)
    if not settings.data.is_file():
        raise fail(
            f"{settings.data}: data file not found; fix: check data in node.toml", EXIT_INPUT
        )
    store = _budget_store(settings)
    old, new = store.reset(settings.dataset_name, settings.data, reason=reason)
    signer = load_or_create_signer(
        settings.record_key, comment=f"residency-record-{settings.country}"
    )
    Ledger(settings.ledger, signer).append(
        EntryKind.BUDGET_RESET,
        country=settings.country,
        reason=reason.strip(),
        detail={"dataset": settings.dataset_name, "old_account": old, "new_account": new},
    )
    console.print(
        f"node {settings.country}: dataset {settings.dataset_name} has a new budget account "
        f"({new[:12]}…; the old one, {old[:12]}…, keeps its charges); recorded in "
        f"{settings.ledger}"
    )
