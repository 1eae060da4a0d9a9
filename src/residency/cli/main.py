"""``residency``: run the demo or a federated job in simulation.

Exit codes: 0 success; 2 invalid input (job file, node data, flags), with one line naming file,
field and fix; 3 the federation failed (e.g. no node produced a valid update); 4 the
coordinator could not be reached or refused the request; 130 stopped by Ctrl-C (the results
say "stopped"); 1 anything else.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from residency.cli.audit import audit_app
from residency.cli.common import EXIT_FAILED, EXIT_INPUT, console, default_output, fail
from residency.cli.coordinator import coordinator_app
from residency.cli.dashboard import dashboard
from residency.cli.launch import run, runs_app
from residency.cli.launcher import launcher_app
from residency.cli.node import node_app
from residency.common.config.job import (
    DEFAULT_PIPELINE,
    Job,
    TrainSection,
    load_job,
    parse_pipeline,
    pipeline_name,
)
from residency.common.config.kinds import UpdateKind
from residency.common.errors import ConfigError, DataError
from residency.common.updates.traits import traits_for
from residency.common.version import __version__

EXIT_STOPPED = 130

app = typer.Typer(
    help="Federated fine-tuning of BERT-family models with per-country differential privacy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(node_app, name="node")
app.add_typer(launcher_app, name="launcher")
app.add_typer(runs_app, name="runs")
app.add_typer(audit_app, name="audit")
app.command()(run)
app.command()(dashboard)


def _version(value: bool) -> None:
    if value:
        console.print(f"residency {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Residency command line."""


def _run_simulation(job: Job, job_path: Path, out_dir: Path) -> None:
    from residency.cli.progress import RichObserver, results_table
    from residency.cli.run_log import log_to_file
    from residency.cli.simulation import simulate
    from residency.server.federation import JobFailed

    if out_dir.exists() and any(out_dir.iterdir()) and (out_dir / "results.json").exists():
        raise fail(
            f"{out_dir}: output folder already holds a run; fix: pass a new --output folder",
            EXIT_INPUT,
        )
    countries = ", ".join(node.country for node in job.nodes)
    console.print(
        f"[bold]{job.name}[/]: {len(job.nodes)} countries ({countries}), "
        f"{job.train.describe()}, "
        f"target ε={job.privacy.target_epsilon:g} "
        f"δ={job.privacy.delta:g} per country; output {out_dir}"
    )
    started = time.perf_counter()
    try:
        with log_to_file(out_dir / "residency.log"), RichObserver(job, console) as observer:
            results = simulate(job, job_path, out_dir=out_dir, observer=observer)
    except (ConfigError, DataError) as exc:
        raise fail(str(exc), EXIT_INPUT) from exc
    except JobFailed as exc:
        raise fail(f"{exc} (log: {out_dir / 'residency.log'})", EXIT_FAILED) from exc
    except KeyboardInterrupt:
        console.print(f"stopped: {out_dir / 'results.json'} says so, the ledger too")
        sys.stdout.flush()
        sys.stderr.flush()
        # Flower's simulation workers can stay blocked in ray.get once Ray is shut down, and
        # the interpreter would wait for them for ever; the run's end is already written.
        os._exit(EXIT_STOPPED)
    console.print(results_table(results, [n.country for n in job.nodes]))
    if results.final is not None:
        acc = results.final.accuracy
        f1 = results.final.macro_f1
        if acc is not None and f1 is not None:
            kept = results.final.round
            chosen = "" if kept is None else f" (round {kept}'s model, best on the held-out part)"
            console.print(f"final accuracy {100 * acc:.1f}%, macro-F1 {100 * f1:.1f}%{chosen}")
    console.print(
        f"done in {time.perf_counter() - started:.0f} s: {out_dir / 'results.json'}, "
        f"model in {out_dir / 'model'}, log {out_dir / 'residency.log'}\n"
        f"privacy ledger {out_dir / 'ledger' / 'ledger.jsonl'}; check it with: residency audit "
        f"verify {out_dir / 'ledger' / 'ledger.jsonl'} --keys {out_dir / 'keys'}\n"
        f"charts in a browser: residency dashboard {out_dir}"
    )


@app.command()
def simulate(
    job_file: Annotated[Path, typer.Argument(help="Job TOML file with [[nodes]] tables.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output folder (default runs/NAME-TIME).")
    ] = None,
) -> None:
    """Run a federated job on Flower's simulation engine, one virtual node per country."""
    try:
        job = load_job(job_file)
        job.require_nodes(job_file)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_INPUT) from exc
    _run_simulation(job, job_file, output or default_output(job))


@app.command()
def demo(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output folder (default runs/NAME-TIME).")
    ] = None,
    countries: Annotated[
        str, typer.Option(help="Comma-separated countries from DE, FR, ES, BR, CN, US.")
    ] = "DE,FR,ES",
    rounds: Annotated[
        int | None,
        typer.Option(min=1, help="Training rounds (default: the pipeline's; a release has 1)."),
    ] = None,
    update: Annotated[
        str,
        typer.Option(
            help="Pipeline: an update kind (prototypes, head, lora, lora-fa, full), or "
            "prototypes+head, prototypes+lora or prototypes+lora-fa (default: "
            f"{pipeline_name(*DEFAULT_PIPELINE)})."
        ),
    ] = pipeline_name(*DEFAULT_PIPELINE),
    examples: Annotated[int, typer.Option(min=50, help="Training notes per country.")] = 400,
    epsilon: Annotated[
        float, typer.Option(min=0.1, max=100.0, help="Target epsilon per country.")
    ] = 8.0,
    model: Annotated[str, typer.Option(help='"minilm", "tiny" or a checkpoint folder.')] = "minilm",
) -> None:
    """Generate a synthetic multilingual triage federation and fine-tune MiniLM on it with DP."""
    from residency.cli.demo import write_demo_job

    try:
        pipeline = parse_pipeline(update)
    except ValueError:
        raise fail(
            f"--update {update!r}: not a pipeline; fix: one of "
            f"{', '.join(kind.value for kind in UpdateKind)} or prototypes+head",
            EXIT_INPUT,
        ) from None
    kind, warm_start = pipeline
    try:  # the job's own rules, before any file is written
        TrainSection(update=kind, warm_start=warm_start)
    except ValidationError as exc:
        reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise fail(f"--update {update!r}: {reason}", EXIT_INPUT) from None
    if rounds not in (None, 1) and traits_for(kind).is_release:
        raise fail(  # before any file is written
            f"--rounds {rounds}: update {kind.value} is one release; fix: leave out "
            "--rounds, or choose a training pipeline such as --update prototypes+head",
            EXIT_INPUT,
        )
    out_dir = output or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        job, job_path = write_demo_job(
            out_dir / "data",
            countries=[c.strip().upper() for c in countries.split(",") if c.strip()],
            rounds=rounds,
            pipeline=pipeline,
            examples_per_country=examples,
            target_epsilon=epsilon,
            model=model,
        )
    except (ValueError, ConfigError) as exc:
        raise fail(str(exc), EXIT_INPUT) from exc
    console.print(f"demo data (synthetic, generated locally) in {job_path.parent}")
    _run_simulation(job, job_path, out_dir)


def main() -> None:
    """Console-script entry point."""
    app()
