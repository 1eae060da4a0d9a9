"""``residency run`` and ``residency runs``: launch and manage jobs on a coordinator."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from residency.cli.bundle import write_bundle
from residency.cli.common import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_UNAVAILABLE,
    console,
    default_output,
    fail,
    warn_insecure,
)
from residency.cli.flower import (
    CONNECTION,
    Coordinator,
    CoordinatorUnavailable,
    flattened,
    flower_message,
    flwr_binary,
)
from residency.common.config.job import load_job
from residency.common.config.signed_job import VALID_DAYS, new_launch, sign_job
from residency.common.errors import ConfigError
from residency.common.privacy.signing import load_signer
from residency.server.events import (
    NodeFinished,
    RoundFinished,
    RoundStarted,
    RunFinished,
    RunRefused,
    RunStarted,
    Waiting,
    parse,
)
from residency.server.launch_check import REFUSAL_PREFIX
from residency.server.results import Results, RunStatus

runs_app = typer.Typer(help="List and stop runs on a coordinator.", invoke_without_command=True)

CoordinatorOption = Annotated[
    str,
    typer.Option(
        "--coordinator", envvar="RESIDENCY_COORDINATOR", help="Coordinator address HOST:PORT."
    ),
]
CaOption = Annotated[
    Path | None,
    typer.Option("--ca", envvar="RESIDENCY_CA", help="The coordinator's ca.pem."),
]
KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--key",
        envvar="RESIDENCY_LAUNCHER_KEY",
        help="Your launcher key (`residency launcher init`); the coordinator and nodes must "
        "trust it.",
    ),
]
InsecureOption = Annotated[
    bool, typer.Option("--insecure", help="Plain-text connection (tests only).")
]
_STARTED = re.compile(r"started run (\d+)")


def _coordinator(address: str, ca: Path | None, insecure: bool) -> Coordinator:
    if insecure:
        warn_insecure("client")
        return Coordinator(address=address, ca=None, insecure=True)
    if ca is None:
        raise fail("--ca: missing; fix: pass the coordinator's tls/ca.pem", EXIT_INPUT)
    if not ca.is_file():
        raise fail(f"--ca: {ca}: file not found; fix: pass the coordinator's ca.pem", EXIT_INPUT)
    return Coordinator(address=address, ca=ca)


def run(
    job_file: Annotated[Path, typer.Argument(help="Job TOML file ([[nodes]] name countries).")],
    coordinator: CoordinatorOption,
    ca: CaOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Local folder for results.json + log.")
    ] = None,
    key: KeyOption = None,
    insecure: InsecureOption = False,
    valid_days: Annotated[
        float,
        typer.Option(
            "--valid-days",
            help="Days the signed job stays runnable; nodes refuse it afterwards (0 < d <= 3660).",
        ),
    ] = VALID_DAYS,
) -> None:
    """Launch a job on the connected nodes, stream its progress, write its results."""
    from residency.cli.progress import RichObserver, results_table

    try:
        job = load_job(job_file, remote=True)
        job.require_nodes(job_file, with_data=False)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_INPUT) from exc
    out_dir = output or default_output(job)
    if (out_dir / "results.json").exists():
        raise fail(
            f"{out_dir}: output folder already holds a run; fix: pass a new --output", EXIT_INPUT
        )
    target = _coordinator(coordinator, ca, insecure)
    if key is None:
        raise fail(
            "--key: missing; fix: pass your launcher key (`residency launcher init DIR` makes "
            "one; the coordinator and each node list its public key in trusted_launchers)",
            EXIT_INPUT,
        )
    try:
        launch = new_launch(valid_days=valid_days)
    except ValueError as exc:
        raise fail(f"--valid-days: {exc}; fix: pass a number of days, e.g. 30", EXIT_INPUT) from exc
    try:
        signed = sign_job(job, load_signer(key), launch=launch)
    except ConfigError as exc:
        raise fail(f"--key: {exc}", EXIT_INPUT) from exc
    countries = [node.country for node in job.nodes]
    console.print(
        f"[bold]{job.name}[/] on {coordinator}: {', '.join(countries)}, "
        f"{job.train.describe()}, "
        f"target ε={job.privacy.target_epsilon:g} δ={job.privacy.delta:g} per country"
    )
    started = time.perf_counter()
    results: Results | None = None
    run_id: str | None = None
    run_dir, rounds_done = "(unknown)", 0
    refused: str | None = None
    out_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="residency-app-") as bundle,
        target.home() as env,
        (out_dir / "run.log").open("w", encoding="utf-8") as log,
        RichObserver(job, console) as observer,
    ):
        write_bundle(signed, Path(bundle))
        process = subprocess.Popen(
            [flwr_binary(), "run", bundle, CONNECTION, "--stream"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        printed: list[str] = []
        begun = threading.Event()  # the ServerApp started: the run is not queued
        try:
            for line in process.stdout:
                log.write(line)
                printed.append(line)
                if run_id is None and (match := _STARTED.search(line)):
                    run_id = match.group(1)
                    console.print(f"run {run_id} started")
                    queue_check = threading.Timer(
                        QUEUE_CHECK_S, _say_if_queued, (target, run_id, begun)
                    )
                    queue_check.daemon = True
                    queue_check.start()
                event = parse(line)
                if isinstance(event, RunStarted):
                    begun.set()
                    run_dir = event.run_dir
                    console.print(f"outputs on the coordinator host: {run_dir}")
                elif isinstance(event, RoundStarted):
                    observer.round_started(event.round, event.nodes, event.update)
                elif isinstance(event, NodeFinished):
                    observer.node_finished(event.round, event.report)
                elif isinstance(event, RoundFinished):
                    rounds_done += 1
                    observer.round_finished(event.result)
                elif isinstance(event, Waiting):
                    observer.waiting(event.round, event.missing, event.waited_s, event.limit_s)
                elif isinstance(event, RunRefused):
                    refused = event.error
                elif isinstance(event, RunFinished):
                    results = event.results
                    results.write(out_dir / "results.json")
        except KeyboardInterrupt:
            process.terminate()
            hint = f"; stop it with `residency runs stop {run_id}`" if run_id else ""
            raise fail(f"detached: run {run_id} continues on the coordinator{hint}", 130) from None
        process.wait()
    if run_id is None:
        text = flattened("".join(printed))
        if REFUSAL_PREFIX in text:  # checked before any run existed (server/launch_check.py)
            reason = text.split(REFUSAL_PREFIX, 1)[1].strip()
            raise fail(f"{coordinator}: {REFUSAL_PREFIX}{reason}", EXIT_UNAVAILABLE)
        detail = flower_message("".join(printed))
        raise fail(f"{coordinator}: the run did not start: {detail}", EXIT_UNAVAILABLE)
    if refused is not None:
        raise fail(f"run {run_id}: {REFUSAL_PREFIX}{refused}", EXIT_UNAVAILABLE)
    if results is None:
        # Flower closes the log stream when a run is stopped, before its last lines arrive.
        status = _run_status(target, run_id)
        if status.endswith("stopped"):
            raise fail(
                f"run {run_id} was stopped after {rounds_done} round(s); results on the "
                f"coordinator host: {run_dir}",
                EXIT_FAILED,
            )
        raise fail(
            f"run {run_id}: ended ({status}) without results (log: {out_dir / 'run.log'})",
            EXIT_FAILED,
        )
    console.print(results_table(results, countries))
    if results.status is RunStatus.STOPPED:
        raise fail(f"run {run_id} was stopped after {len(results.rounds)} round(s)", EXIT_FAILED)
    if results.status is not RunStatus.COMPLETED:
        raise fail(
            f"run {run_id} failed: {results.error} (log: {out_dir / 'run.log'})", EXIT_FAILED
        )
    model = results.final.model_dir if results.final else "-"
    console.print(
        f"done in {time.perf_counter() - started:.0f} s: {out_dir / 'results.json'}; "
        f"model on the coordinator host in {model}"
    )


OptionalCoordinator = Annotated[
    str | None,
    typer.Option(
        "--coordinator", envvar="RESIDENCY_COORDINATOR", help="Coordinator address HOST:PORT."
    ),
]


QUEUE_CHECK_S = 3.0
"""How long after its launch ``run`` asks whether a run that has not started is queued."""


def _say_if_queued(target: Coordinator, run_id: str, begun: threading.Event) -> None:
    if begun.is_set():
        return
    try:
        listed = with_queue(target.call_json("ls", CONNECTION).get("runs", []))
    except CoordinatorUnavailable:
        return
    for item in listed:
        position = item.get(QUEUE_POSITION)
        if str(item.get("run-id")) == run_id and position is not None and not begun.is_set():
            console.print(
                f"run {run_id} is queued (#{position}): the coordinator runs at most "
                "max_concurrent_runs jobs at once and starts this one when a slot frees "
                f"(`residency runs` lists the queue; `residency runs stop {run_id}` leaves it)"
            )


def _run_status(target: Coordinator, run_id: str) -> str:
    try:
        answer = target.call_json("ls", CONNECTION, "--run-id", run_id)
    except CoordinatorUnavailable:
        return "status unknown"
    runs = answer.get("runs", [])
    return str(runs[0].get("status")) if runs else "status unknown"


QUEUE_POSITION = "queue-position"
"""Key ``runs --json`` adds to a run waiting for a free slot: 1 starts next."""


def with_queue(listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flower's run list, each pending run numbered in the order the coordinator starts them.

    A coordinator runs at most ``max_concurrent_runs`` jobs; later launches stay ``pending``
    in Flower until a slot frees, and its SuperExec starts the oldest first.
    """
    pending = sorted(
        (item for item in listed if str(item.get("status")) == "pending"),
        key=lambda item: str(item.get("pending-at")),
    )
    order = {str(item.get("run-id")): n for n, item in enumerate(pending, start=1)}
    return [
        {**item, QUEUE_POSITION: order[str(item.get("run-id"))]}
        if str(item.get("run-id")) in order
        else item
        for item in listed
    ]


@runs_app.callback()
def runs(
    ctx: typer.Context,
    coordinator: OptionalCoordinator = None,
    ca: CaOption = None,
    insecure: InsecureOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List runs with their status (or use a subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    if coordinator is None:
        raise fail("--coordinator: missing; fix: pass HOST:PORT of the coordinator", EXIT_INPUT)
    try:
        answer = _coordinator(coordinator, ca, insecure).call_json("ls", CONNECTION)
    except CoordinatorUnavailable as exc:
        raise fail(str(exc), EXIT_UNAVAILABLE) from exc
    listed = with_queue(answer.get("runs", []))
    if as_json:
        print(json.dumps(listed, indent=2))
        return
    table = Table(title=f"runs on {coordinator}", header_style="bold")
    for column in ("run id", "status", "started", "finished", "elapsed", "traffic"):
        table.add_column(column, no_wrap=True)
    for item in listed:
        traffic = item.get("network-traffic", {}).get("total-bytes", 0)
        position = item.get(QUEUE_POSITION)
        table.add_row(
            str(item.get("run-id")),
            str(item.get("status")) if position is None else f"queued (#{position})",
            str(item.get("running-at") or f"queued since {item.get('pending-at')}"),
            str(item.get("finished-at")),
            f"{float(item.get('elapsed', 0)):.0f} s",
            f"{int(traffic) / 1e6:.2f} MB",
        )
    console.print(table)


@runs_app.command()
def stop(
    run_id: Annotated[int, typer.Argument(help="Run id from `runs`.")],
    coordinator: CoordinatorOption,
    ca: CaOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Stop a run; its nodes stop being asked, and budget already spent stays spent."""
    try:
        _coordinator(coordinator, ca, insecure).call_json("stop", str(run_id), CONNECTION)
    except CoordinatorUnavailable as exc:
        raise fail(str(exc), EXIT_UNAVAILABLE) from exc
    console.print(f"run {run_id} stopped")
