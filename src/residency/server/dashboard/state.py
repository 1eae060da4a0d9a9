"""What the dashboard shows, read from a coordinator folder or a ``simulate`` output folder.

Everything comes from files the coordinator already writes: each run's ``results.json``
(rewritten atomically after every round), the privacy ledger (each country's signed records,
for its dataset's lifetime ε per round), ``nodes.json`` (admitted keys) and SuperLink's own
database (which nodes are online), read through Flower's table models on a read-only
connection. The dashboard writes nothing and reads no node's files.

The ledger's records are shown as recorded; checking their signatures and recomputing their
ε is the auditor's work (``residency audit verify``), not a monitoring page's.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from residency.common import charts
from residency.common.errors import ConfigError
from residency.common.privacy.ledger import LEDGER_FILE, EntryKind, LedgerEntry
from residency.common.privacy.record import PrivacyRecord
from residency.server.admitted_nodes import read_admitted
from residency.server.coordinator import SETTINGS_FILE, CoordinatorDir
from residency.server.results import RESULTS_FILE, NodeStatus, Results, RunStatus

log = logging.getLogger("residency.dashboard")

LEDGER = Path("ledger") / LEDGER_FILE
"""Where a coordinator folder and a run's output keep the privacy ledger."""
MAX_RUNS = 20
"""Runs shown, newest first: a coordinator that has run hundreds of jobs still loads fast."""


class Refusal(BaseModel):
    """A round a country declined or whose reply was rejected, with the reason it gave."""

    round: int
    status: str
    reason: str


class CountryView(BaseModel):
    """One country in one run: its ε against the job's target and its lifetime budget."""

    country: str
    epsilon: float | None
    target_epsilon: float
    epsilon_dataset: float | None
    budget_epsilon: float | None
    rounds_charged: int
    rounds_unconfirmed: int
    refusals: list[Refusal]
    dropped_rounds: list[int]
    last_reply_round: int | None
    privacy_unit: str = "record"  # what its ε is per: record, or person (node.toml's)


class RoundView(BaseModel):
    """One completed round of the global model."""

    round: int
    update: str | None
    accuracy: float | None
    macro_f1: float | None
    bytes_up: int
    bytes_down: int
    seconds: float
    dropped: list[str]


class RunView(BaseModel):
    """One run as its ``results.json`` stands now, with its charts."""

    id: str
    job: str
    status: RunStatus
    error: str | None
    started_at: str
    finished_at: str | None
    rounds_planned: int
    in_flight: int | None
    rounds: list[RoundView]
    countries: list[CountryView]
    final_accuracy: float | None
    final_macro_f1: float | None
    final_round: int | None  # whose model was kept (the best on the held-out part)
    figures: dict[str, charts.Figure]


class NodeView(BaseModel):
    """A node the coordinator knows: admitted keys (deployment) or virtual nodes (simulation)."""

    country: str
    node_id: str | None
    key_sha256: str | None
    admitted_at: str | None
    online: bool | None
    last_seen: str | None


class DashboardState(BaseModel):
    """The whole page's data; ``version`` changes whenever a file it was read from does."""

    folder: str
    kind: str
    version: str
    read_at: str
    runs: list[RunView]
    nodes: list[NodeView]
    problems: list[str]


def folder_kind(folder: Path) -> str:
    """``coordinator`` or ``simulation``; a folder that is neither is refused in one line."""
    if not folder.is_dir():
        raise ConfigError(
            f"{folder}: no such folder; fix: name a coordinator folder or a run's output"
        )
    if (folder / SETTINGS_FILE).is_file():
        return "coordinator"
    if (folder / RESULTS_FILE).is_file():
        return "simulation"
    raise ConfigError(
        f"{folder}: neither a coordinator folder ({SETTINGS_FILE}) nor a run's output "
        f"({RESULTS_FILE}); fix: name the folder given to `coordinator init` or to "
        "`simulate --output` (a run writes its results.json as it starts)"
    )


def _run_folders(folder: Path, kind: str) -> list[Path]:
    if kind == "simulation":
        return [folder]
    runs = [p for p in (folder / "runs").glob("*") if (p / RESULTS_FILE).is_file()]
    runs.sort(key=lambda p: (p / RESULTS_FILE).stat().st_mtime, reverse=True)
    return runs[:MAX_RUNS]


def watched_files(folder: Path, kind: str) -> list[Path]:
    """The files whose change means the page is stale."""
    files = [run / RESULTS_FILE for run in _run_folders(folder, kind)]
    files.append(folder / LEDGER)
    if kind == "coordinator":
        directory = CoordinatorDir(folder)
        files += [directory.admitted, directory.database, directory.runs]
    return files


def version(files: list[Path]) -> str:
    """A cheap fingerprint of the files' inodes, sizes and times (atomic writes make new inodes)."""
    parts = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            parts.append(f"{path.name}:-")
            continue
        parts.append(f"{path}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _dataset_epsilons(ledger: Path, problems: list[str]) -> dict[tuple[str, str], dict[int, float]]:
    """(run, country) -> round -> the dataset's lifetime ε its record states (before schema 5).

    A record of schema 5 on no longer states it (it would tell this coordinator what others
    spent on the data): such rounds get no point, and the table shows no number.
    """
    found: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    if not ledger.is_file():
        return found
    for number, line in enumerate(ledger.read_text("utf-8", errors="replace").splitlines()):
        try:
            entry = LedgerEntry.model_validate_json(line)
            if entry.kind != EntryKind.RECORD or entry.record is None:
                continue
            record = PrivacyRecord.model_validate_json(entry.record.body)
        except ValidationError:
            problems.append(f"{ledger}: entry {number} is not a ledger record; run `audit verify`")
            continue
        if record.epsilon_dataset is not None:
            found[(record.run, record.country)][record.round] = record.epsilon_dataset
    return found


def _countries(results: Results) -> list[CountryView]:
    named = [n.get("country") for n in results.config.get("nodes", []) if isinstance(n, dict)]
    names = sorted(
        {n.country for r in results.rounds for n in r.nodes}
        | {c for r in results.rounds for c in r.dropped}
        | {c for c in named if isinstance(c, str)}
        | set(results.privacy)
    )
    views = []
    for country in names:
        privacy = results.privacy.get(country)
        mine = [(r.round, n) for r in results.rounds for n in r.nodes if n.country == country]
        refusals = [
            Refusal(round=number, status=node.status.value, reason=node.reason or "")
            for number, node in mine
            if node.status != NodeStatus.OK
        ]
        replies = [number for number, node in mine if node.status == NodeStatus.OK]
        views.append(
            CountryView(
                country=country,
                epsilon=privacy.epsilon if privacy else None,
                target_epsilon=privacy.target_epsilon if privacy else _target(results),
                epsilon_dataset=privacy.epsilon_dataset if privacy else None,
                budget_epsilon=privacy.budget_epsilon if privacy else None,
                rounds_charged=privacy.rounds_charged if privacy else 0,
                rounds_unconfirmed=privacy.rounds_unconfirmed if privacy else 0,
                refusals=refusals,
                dropped_rounds=[r.round for r in results.rounds if country in r.dropped],
                last_reply_round=max(replies, default=None),
                privacy_unit=privacy.privacy_unit if privacy else "record",
            )
        )
    return views


def _target(results: Results) -> float:
    privacy = results.config.get("privacy", {})
    return float(privacy.get("target_epsilon", float("nan")))


def _planned(results: Results) -> int:
    train = results.config.get("train", {})
    rounds = int(train.get("rounds", len(results.rounds)) or 0)
    return rounds + (1 if train.get("warm_start") else 0)


def _figures(
    results: Results,
    run_id: str,
    countries: list[CountryView],
    dataset: dict[tuple[str, str], dict[int, float]],
    planned: int,
) -> dict[str, charts.Figure]:
    numbers = [r.round for r in results.rounds]
    axis = max(planned, max(numbers, default=0))
    figures = {
        "quality": charts.line_chart(
            "Global model on the test set",
            "score",
            [
                charts.Series(
                    "accuracy", numbers, [r.accuracy for r in results.rounds], charts.BLUE
                ),
                charts.Series(
                    "macro-F1",
                    numbers,
                    [r.macro_f1 for r in results.rounds],
                    charts.ORANGE,
                    dash="dash",
                    marker="square",
                ),
            ],
            rounds=axis,
            percent=True,
        ),
        "bytes": charts.line_chart(
            "Bytes per round",
            "bytes",
            [
                charts.Series(
                    "up (nodes → coordinator)",
                    numbers,
                    [float(r.bytes_up) for r in results.rounds],
                    charts.GREEN,
                ),
                charts.Series(
                    "down (coordinator → nodes)",
                    numbers,
                    [float(r.bytes_down) for r in results.rounds],
                    charts.PURPLE,
                    dash="dash",
                    marker="square",
                ),
            ],
            rounds=axis,
        ),
        "seconds": charts.line_chart(
            "Time per round",
            "seconds",
            [
                charts.Series(
                    "round time", numbers, [r.seconds for r in results.rounds], charts.GREY
                )
            ],
            rounds=axis,
        ),
    }
    overview: list[charts.Series] = []
    for view in countries:
        replies = [
            (r.round, n.epsilon)
            for r in results.rounds
            for n in r.nodes
            if n.country == view.country
        ]
        spent = [r for r, _ in replies], [e for _, e in replies]
        overview.append(charts.Series(view.country, *spent, charts.BLUE, width=1.5))
        by_round = dataset.get((run_id, view.country), {})
        series = [charts.Series("run ε", *spent, charts.BLUE)]
        if by_round:
            rounds = sorted(by_round)
            series.append(
                charts.Series(
                    "dataset ε, lifetime",
                    rounds,
                    [by_round[r] for r in rounds],
                    charts.PURPLE,
                    dash="dot",
                    marker="diamond",
                )
            )
        figures[f"burndown-{view.country}"] = charts.burndown_chart(
            view.country,
            series,
            rounds=axis,
            target=view.target_epsilon,
            budget=view.budget_epsilon,
            refused=[refusal.round for refusal in view.refusals],
            dropped=view.dropped_rounds,
        )
    target = _target(results)
    figures["epsilon"] = charts.epsilon_overview_chart(overview, rounds=axis, target=target)
    return figures


_CACHE_SIZE = 4 * MAX_RUNS
_cache: dict[tuple[object, ...], RunView] = {}


def _run(
    folder: Path, dataset: dict[tuple[str, str], dict[int, float]], problems: list[str]
) -> RunView | None:
    """One run's view, rebuilt only when its results or its ledger records changed.

    Building plotly figures costs about 15 ms each; a finished run's never change, so the page
    stays fast on a coordinator with many runs and many open browsers.
    """
    path = folder / RESULTS_FILE
    run_id = _run_id(folder, dataset)
    try:
        stat = path.stat()
        key = (
            str(path),
            stat.st_ino,
            stat.st_size,
            stat.st_mtime_ns,
            tuple(
                sorted(
                    (c, tuple(sorted(e.items()))) for (r, c), e in dataset.items() if r == run_id
                )
            ),
        )
        if key in _cache:
            return _cache[key]
        results = Results.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as error:
        first = str(error).splitlines()[0]
        problems.append(f"{path}: unreadable ({first}); the page shows the other runs")
        return None
    view = _build_run(run_id, results, dataset)
    if len(_cache) >= _CACHE_SIZE:
        _cache.pop(next(iter(_cache)))
    _cache[key] = view
    return view


def _build_run(
    run_id: str, results: Results, dataset: dict[tuple[str, str], dict[int, float]]
) -> RunView:
    countries = _countries(results)
    planned = _planned(results)
    final = results.final
    return RunView(
        id=run_id,
        job=results.job,
        status=results.status,
        error=results.error,
        started_at=results.started_at,
        finished_at=results.finished_at,
        rounds_planned=planned,
        in_flight=results.in_flight.round if results.in_flight else None,
        rounds=[
            RoundView(
                round=r.round,
                update=r.update,
                accuracy=r.accuracy,
                macro_f1=r.macro_f1,
                bytes_up=r.bytes_up,
                bytes_down=r.bytes_down,
                seconds=r.seconds,
                dropped=r.dropped,
            )
            for r in results.rounds
        ],
        countries=countries,
        final_accuracy=final.accuracy if final else None,
        final_macro_f1=final.macro_f1 if final else None,
        final_round=final.round if final else None,
        figures=_figures(results, run_id, countries, dataset, planned),
    )


def _run_id(folder: Path, dataset: dict[tuple[str, str], dict[int, float]]) -> str:
    """A deployed run's folder is its Flower run id; a simulation's is found in its ledger."""
    if folder.name.isdigit():
        return folder.name
    runs = {run for run, _ in dataset}
    return runs.pop() if len(runs) == 1 else folder.name


def _online_nodes(database: Path, problems: list[str]) -> dict[str, tuple[bool, str | None]]:
    """Flower node id -> (online now, last heartbeat), from SuperLink's database, read-only."""
    if not database.is_file():
        return {}
    from flwr.common.constant import HEARTBEAT_PATIENCE
    from flwr.supercore.state.schema.linkstate_models import Node as NodeModel
    from flwr.supercore.utils import int64_to_uint64
    from sqlalchemy import create_engine, select
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import Session

    engine = create_engine(f"sqlite:///file:{database}?mode=ro&uri=true")
    found: dict[str, tuple[bool, str | None]] = {}
    try:
        with Session(engine) as session:
            for node in session.scalars(select(NodeModel)):
                until = node.online_until
                last = None
                if until is not None:
                    beat = until - HEARTBEAT_PATIENCE * (node.heartbeat_interval or 0)
                    last = datetime.fromtimestamp(beat, UTC).isoformat(timespec="seconds")
                online = until is not None and until > datetime.now(UTC).timestamp()
                found[str(int64_to_uint64(node.node_id or 0))] = (online, last)
    except SQLAlchemyError as error:
        problems.append(f"{database}: not readable now ({type(error).__name__}); retrying")
    finally:
        engine.dispose()
    return found


def _virtual_nodes(run: RunView) -> list[NodeView]:
    """A simulation's nodes: online while the run runs, unless dropped from its last round."""
    live = run.status == RunStatus.RUNNING
    last_dropped = run.rounds[-1].dropped if run.rounds else []
    return [
        NodeView(
            country=c.country,
            node_id=None,
            key_sha256=None,
            admitted_at=None,
            online=live and c.country not in last_dropped,
            last_seen=f"round {c.last_reply_round}" if c.last_reply_round else None,
        )
        for c in run.countries
    ]


def _nodes(folder: Path, kind: str, runs: list[RunView], problems: list[str]) -> list[NodeView]:
    if kind == "simulation":
        return _virtual_nodes(runs[0]) if runs else []
    directory = CoordinatorDir(folder)
    try:
        admitted = read_admitted(directory.admitted)
    except (OSError, ValidationError, json.JSONDecodeError) as error:
        problems.append(f"{directory.admitted}: unreadable ({type(error).__name__})")
        admitted = []
    online = _online_nodes(directory.database, problems)
    views = []
    for node in admitted:
        state = online.get(node.node_id)
        views.append(
            NodeView(
                country=node.country,
                node_id=node.node_id,
                key_sha256=node.key_sha256,
                admitted_at=node.admitted_at,
                online=state[0] if state else False,
                last_seen=state[1] if state else None,
            )
        )
    return views


def read_state(folder: Path) -> DashboardState:
    """Everything the page shows, read now; unreadable parts become ``problems``, not errors."""
    kind = folder_kind(folder)
    files = watched_files(folder, kind)
    problems: list[str] = []
    dataset = _dataset_epsilons(folder / LEDGER, problems)
    runs = [
        run
        for run in (_run(path, dataset, problems) for path in _run_folders(folder, kind))
        if run is not None
    ]
    return DashboardState(
        folder=str(folder),
        kind=kind,
        version=version(files),
        read_at=datetime.now(UTC).isoformat(timespec="seconds"),
        runs=runs,
        nodes=_nodes(folder, kind, runs, problems),
        problems=problems,
    )
