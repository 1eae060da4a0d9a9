"""Live terminal view of a federation: round and node-epoch progress, then a results table."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from residency.common.config.job import Job
from residency.common.config.kinds import UpdateKind
from residency.common.updates.traits import traits_for
from residency.server.results import NodeRound, NodeStatus, Results, RoundResult


def human_bytes(count: int) -> str:
    """``1536`` -> ``1.5 KB`` (decimal units, as network tools report)."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


class RichObserver:
    """Implements ``FederationObserver`` with a rich progress display."""

    def __init__(self, job: Job, console: Console) -> None:
        self.job = job
        self.console = console
        self.countries = [node.country for node in job.nodes]
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.unit, self.per_node = self._work(job.train.round_update(1))
        self.rounds = self.progress.add_task("rounds", total=job.train.server_rounds)
        self.epochs = self.progress.add_task(self.unit, total=len(job.nodes) * self.per_node)

    def _work(self, update: UpdateKind) -> tuple[str, int]:
        """Per node in a round: its local epochs, or its one release (which has no epochs)."""
        if traits_for(update).is_release:
            return "releases", 1
        return "local epochs", self.job.train.local_epochs

    def __enter__(self) -> RichObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def round_started(self, server_round: int, nodes: int, update: UpdateKind) -> None:
        """Show the bars (from the first round on) and reset the node-epoch bar.

        ``update`` is what the round asks for: a refine is a release, though the job's
        schedule says training.
        """
        self.progress.start()
        self.unit, self.per_node = self._work(update)
        self.progress.update(
            self.epochs,
            completed=0,
            total=nodes * self.per_node,
            description=f"round {server_round}: {self.unit}",
        )

    def node_finished(self, server_round: int, report: NodeRound) -> None:
        """Advance by the epochs the node trained; print refusals, failures and rejections.

        A refusal's or failure's reason is already the coordinator's whole sentence (who,
        which round, why); a rejection's says only why.
        """
        self.progress.advance(self.epochs, self.per_node)
        if report.status is NodeStatus.OK:
            return
        said = report.reason or f"{report.country} {report.status} round {server_round}"
        if report.status is NodeStatus.REJECTED:
            said = f"round {server_round}: {report.country} rejected: {said}"
        self.console.print(f"[yellow]{escape(said)}", highlight=False)

    def round_finished(self, result: RoundResult) -> None:
        """Advance the round bar and print a one-line summary."""
        self.progress.advance(self.rounds)
        if result.refine:  # the refined release spent the job's budget: the job ends here
            self.progress.update(self.rounds, total=result.round)
        eps = "  ".join(
            f"{n.country} ε={n.epsilon:.2f}{_per(n.privacy_unit)}"
            for n in result.nodes
            if n.epsilon is not None
        )
        dropped = f"  dropped: {', '.join(result.dropped)}" if result.dropped else ""
        if result.refine:
            dropped += "  (the release refined with the budget left: training lost ground)"
        self.console.print(
            f"round {result.round}: accuracy {_pct(result.accuracy)}  "
            f"macro-F1 {_pct(result.macro_f1)}  {eps}  "
            f"↑{human_bytes(result.bytes_up)} ↓{human_bytes(result.bytes_down)}{dropped}",
            markup=False,
        )

    def waiting(
        self, server_round: int, missing: list[str], waited_s: float, limit_s: float
    ) -> None:
        """Say who the round still waits for, and how long it will."""
        self.console.print(
            f"round {server_round}: waiting for {', '.join(missing) or 'nodes'} to connect "
            f"({waited_s:.0f} s of {limit_s:g} s; [train] nodes_timeout_s)",
            markup=False,
            highlight=False,
        )


def _per(unit: str) -> str:
    """What a shown ε is per, where that is not the default record: " per person"."""
    return "" if unit == "record" else f" per {unit}"


def results_table(results: Results, countries: list[str]) -> Table:
    """One row per round: global scores, each country's cumulative epsilon, bytes up/down."""
    table = Table(title=f"{results.job}: federated rounds", header_style="bold")
    units = {c: p.privacy_unit for c, p in results.privacy.items()}
    columns = (
        f"ε {c}" if units.get(c, "record") == "record" else f"ε {c}/{units[c]}" for c in countries
    )
    for name in ("round", "accuracy", "macro-F1", *columns):
        table.add_column(name, justify="right", no_wrap=True)
    for name in ("↑ bytes", "↓ bytes", "time"):
        table.add_column(name, justify="right", no_wrap=True)
    rows = ([results.baseline] if results.baseline else []) + results.rounds
    for row in rows:
        by_country = {node.country: node for node in row.nodes}
        eps = []
        for country in countries:
            node = by_country.get(country)
            if node is None or node.epsilon is None:
                eps.append("-" if node is None else str(node.status))
            else:
                eps.append(f"{node.epsilon:.2f}")
        table.add_row(
            str(row.round) if row.round else "start",
            _pct(row.accuracy),
            _pct(row.macro_f1),
            *eps,
            human_bytes(row.bytes_up),
            human_bytes(row.bytes_down),
            f"{row.seconds:.0f} s",
        )
    return table
