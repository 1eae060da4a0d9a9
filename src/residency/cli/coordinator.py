"""``residency coordinator``: create, start and admit nodes to a coordinator."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from residency.cli.common import EXIT_INPUT, EXIT_UNAVAILABLE, console, fail, warn_insecure
from residency.cli.flower import Coordinator, CoordinatorUnavailable
from residency.cli.processes import Child, supervise
from residency.common.country import iso_country
from residency.common.errors import ConfigError
from residency.common.privacy.signing import load_signer
from residency.server.admitted_nodes import (
    AdmittedNode,
    key_fingerprint,
    read_admitted,
    record_admission,
)
from residency.server.coordinator import (
    DEFAULT_PORT,
    CoordinatorDir,
    CoordinatorSettings,
    init_coordinator,
    superlink_command,
)
from residency.server.launch import SHUTDOWN_MARKER
from residency.server.recovery import settle_open_runs
from residency.server.run_lock import RunDriven

coordinator_app = typer.Typer(
    help="Run the coordinator: its CA, its SuperLink, and which nodes may join.",
    no_args_is_help=True,
)

DirOption = Annotated[Path, typer.Option("--dir", "-d", help="Coordinator folder.")]


def _load(root: Path) -> tuple[CoordinatorDir, CoordinatorSettings]:
    folder = CoordinatorDir(root)
    try:
        return folder, folder.load()
    except ConfigError as exc:
        raise fail(str(exc), EXIT_INPUT) from exc


def port_taken(host: str, port: int) -> bool:
    """True when something already listens on ``host:port`` (a SuperLink left running)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _local(folder: CoordinatorDir, settings: CoordinatorSettings) -> Coordinator:
    return Coordinator(address=settings.address, ca=folder.tls.ca_cert)


@coordinator_app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="New folder for the coordinator.")],
    san: Annotated[
        list[str],
        typer.Option(help="DNS name or IP address nodes dial (repeat); the first is advertised."),
    ],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(min=1, max=65_535, help="HTTPS port.")] = DEFAULT_PORT,
    trust_launcher: Annotated[
        list[str] | None,
        typer.Option(
            help="Public key (64 hex) of another launcher whose signed jobs may run (repeat)."
        ),
    ] = None,
) -> None:
    """Create a private CA, the server certificate and coordinator.toml."""
    try:
        made = init_coordinator(
            folder,
            names=san,
            host=host,
            port=port,
            launchers=[key.strip().lower() for key in trust_launcher or []],
        )
    except ConfigError as exc:
        raise fail(str(exc), EXIT_INPUT) from exc
    settings = made.load()
    console.print(
        f"coordinator in {folder}: nodes dial [bold]{settings.address}[/] and trust "
        f"{made.tls.ca_cert} (send them this file; keep tls/ca.key private)\n"
        f"launch jobs with `residency run JOB --key {made.launcher_key}`; nodes list its "
        f"public key {load_signer(made.launcher_key).public_hex} in trusted_launchers\n"
        f"next: residency coordinator start {folder}"
    )


@coordinator_app.command()
def start(
    folder: Annotated[Path, typer.Argument(help="Coordinator folder from `coordinator init`.")],
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS (tests only); needs --no-node-auth.")
    ] = False,
    node_auth: Annotated[
        bool, typer.Option("--node-auth/--no-node-auth", help="Admit only registered keys.")
    ] = True,
) -> None:
    """Run SuperLink with TLS, node authentication and SQLite state until SIGINT/SIGTERM."""
    where, settings = _load(folder)
    if insecure and node_auth:
        raise fail(
            "--insecure: node authentication requires TLS, so the coordinator refuses to start; "
            "fix: drop --insecure (or add --no-node-auth, for tests on an isolated network)",
            EXIT_INPUT,
        )
    if not insecure and not node_auth:
        raise fail(
            "--no-node-auth: with TLS on, nodes must be authenticated; fix: drop --no-node-auth",
            EXIT_INPUT,
        )
    if insecure:
        warn_insecure("coordinator")
    if port_taken(settings.host, settings.port):
        raise fail(
            f"{where.settings_file}: port {settings.port} on {settings.host} is in use (is this "
            "coordinator already running?); fix: stop that process, or change port",
            EXIT_UNAVAILABLE,
        )
    try:
        settled_runs = settle_open_runs(where, settings)
    except RunDriven as exc:
        raise fail(
            f"{where.runs}: {exc}; fix: wait for it to stop (or end that process), then start "
            "the coordinator again",
            EXIT_UNAVAILABLE,
        ) from None
    for settled in settled_runs:
        console.print(f"run {settled.run}: {settled.reason}", markup=False)
    marker = where.runs / SHUTDOWN_MARKER  # kept while an earlier start's ServerApps stopped
    marker.unlink(missing_ok=True)  # runs that start from here on end as they are told
    command, env = superlink_command(where, settings, insecure=insecure)
    log = where.logs / "superlink.out"
    scheme = "http" if insecure else "https"
    console.print(
        f"coordinator: SuperLink on {scheme}://{settings.host}:{settings.port} "
        f"(nodes dial {settings.address}); state {where.database}; log {log}; Ctrl-C stops"
    )
    outcome = supervise(
        [Child("superlink", command, env, log, stop_below_first=True)],
        before_stop=marker.touch,  # the runs are left to resume at the next start
    )
    if outcome.first_exit is not None and outcome.first_exit[1] != 0:
        tail = [line for line in log.read_text("utf-8", "replace").splitlines() if line.strip()]
        raise fail(
            f"SuperLink exited with code {outcome.first_exit[1]}: "
            f"{tail[-1].strip() if tail else 'no output'} (log: {log})",
            1,
        )
    console.print("coordinator stopped")


@coordinator_app.command()
def admit(
    public_key: Annotated[Path, typer.Argument(help="The node's keys/node.pub.")],
    country: Annotated[str, typer.Option(help="ISO country code the node speaks for.")],
    folder: DirOption = Path("."),
) -> None:
    """Register a node's public key, so its SuperNode may connect."""
    where, settings = _load(folder)
    country = country.strip().upper()
    try:
        iso_country(country)
    except ValueError as exc:
        raise fail(f"--country: {exc}", EXIT_INPUT) from exc
    if not public_key.is_file():
        raise fail(f"{public_key}: file not found; fix: pass the node's keys/node.pub", EXIT_INPUT)
    fingerprint = key_fingerprint(public_key.read_bytes())
    if any(node.key_sha256 == fingerprint for node in read_admitted(where.admitted)):
        raise fail(f"{public_key}: this key is already admitted; fix: nothing to do", EXIT_INPUT)
    try:
        answer = _local(where, settings).call_json(
            "supernode", "register", str(public_key), "residency", "--name", country
        )
    except CoordinatorUnavailable as exc:
        raise fail(str(exc), EXIT_UNAVAILABLE) from exc
    record = AdmittedNode(node_id=str(answer["node-id"]), country=country, key_sha256=fingerprint)
    record_admission(where.admitted, record)
    console.print(f"admitted {country}: node {record.node_id}, key sha256 {fingerprint[:16]}…")


@coordinator_app.command()
def nodes(
    folder: DirOption = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="The coordinator was started with --insecure.")
    ] = False,
) -> None:
    """List admitted nodes and whether each is connected."""
    where, settings = _load(folder)
    target = (
        Coordinator(address=settings.address, ca=None, insecure=True)
        if insecure
        else _local(where, settings)
    )
    try:
        answer = target.call_json("supernode", "ls", "residency")
    except CoordinatorUnavailable as exc:
        raise fail(str(exc), EXIT_UNAVAILABLE) from exc
    countries = {node.node_id: node for node in read_admitted(where.admitted)}
    rows = [
        {
            "country": known.country if known else None,
            "node_id": str(node.get("node-id")),
            "status": str(node.get("status")),
            "online_at": str(node.get("online-at")),
            "key_sha256": known.key_sha256 if known else None,
        }
        for node in answer.get("nodes", [])
        for known in [countries.get(str(node.get("node-id")))]
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"nodes of {settings.address}", header_style="bold")
    for column in ("country", "node id", "status", "online since", "key sha256"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        key = row["key_sha256"]
        table.add_row(
            row["country"] or "?",
            row["node_id"],
            row["status"],
            row["online_at"],
            f"{key[:16]}…" if key else "-",
        )
    console.print(table)
