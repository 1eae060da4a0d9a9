"""Progress events a deployed ServerApp prints, one JSON line each, for ``residency run``.

A deployed ServerApp runs inside the coordinator; its stdout reaches the launching user only
through Flower's run log stream. Each event is one line with a fixed prefix, so the CLI can
rebuild the same live view and ``results.json`` as in simulation from that stream.
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from residency.common.config.kinds import UpdateKind
from residency.server.results import NodeRound, Results, RoundResult

PREFIX = "residency-event "


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunStarted(_Event):
    """The coordinator accepted the job; its output folder lives on the coordinator host."""

    kind: Literal["started"] = "started"
    run_dir: str
    nodes: int


class RoundStarted(_Event):
    """A round's messages went out."""

    kind: Literal["round_started"] = "round_started"
    round: int
    nodes: int
    update: UpdateKind


class NodeFinished(_Event):
    """One node replied (or refused, or failed)."""

    kind: Literal["node_finished"] = "node_finished"
    round: int
    report: NodeRound


class RoundFinished(_Event):
    """A round was aggregated and scored."""

    kind: Literal["round_finished"] = "round_finished"
    result: RoundResult


class Waiting(_Event):
    """A round waits for countries to connect."""

    kind: Literal["waiting"] = "waiting"
    round: int
    missing: list[str]
    waited_s: float
    limit_s: float


class RunRefused(_Event):
    """The coordinator could not accept the job (e.g. a path that is not on its host)."""

    kind: Literal["refused"] = "refused"
    error: str


class RunFinished(_Event):
    """The whole results document, completed or failed."""

    kind: Literal["finished"] = "finished"
    results: Results


Event = Annotated[
    RunStarted | RoundStarted | NodeFinished | RoundFinished | RunFinished | RunRefused | Waiting,
    Field(discriminator="kind"),
]
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def emit(event: Event) -> None:
    """Print one event line (Flower mirrors the ServerApp's stdout into the run log)."""
    sys.stdout.write(PREFIX + event.model_dump_json() + "\n")
    sys.stdout.flush()


def parse(line: str) -> Event | None:
    """The event on ``line``, or None for ordinary log lines (and for malformed events)."""
    start = line.find(PREFIX)
    if start < 0:
        return None
    try:
        return _EVENT.validate_json(line[start + len(PREFIX) :].strip())
    except ValidationError:
        return None


class EventPrinter:
    """A ``FederationObserver`` that prints events instead of drawing."""

    def round_started(self, server_round: int, nodes: int, update: UpdateKind) -> None:
        """Announce a round."""
        emit(RoundStarted(round=server_round, nodes=nodes, update=update))

    def node_finished(self, server_round: int, report: NodeRound) -> None:
        """Report one node's reply."""
        emit(NodeFinished(round=server_round, report=report))

    def round_finished(self, result: RoundResult) -> None:
        """Report the aggregated round."""
        emit(RoundFinished(result=result))

    def waiting(
        self, server_round: int, missing: list[str], waited_s: float, limit_s: float
    ) -> None:
        """Report who a round still waits for."""
        emit(Waiting(round=server_round, missing=missing, waited_s=waited_s, limit_s=limit_s))
