"""What the coordinator's round loop tells whoever shows its progress (CLI, events, tests)."""

from __future__ import annotations

from typing import Protocol

from residency.common.config.kinds import UpdateKind
from residency.server.results import NodeRound, RoundResult


class FederationObserver(Protocol):
    """Receives progress as it happens (the CLI renders it; tests record it)."""

    def round_started(self, server_round: int, nodes: int, update: UpdateKind) -> None:
        """A round's messages went out to ``nodes`` nodes, asking for ``update``."""

    def node_finished(self, server_round: int, report: NodeRound) -> None:
        """One node's reply arrived (or it failed)."""

    def round_finished(self, result: RoundResult) -> None:
        """The round was aggregated and the global model scored."""

    def waiting(
        self, server_round: int, missing: list[str], waited_s: float, limit_s: float
    ) -> None:
        """Round ``server_round`` waits for ``missing`` to connect, ``waited_s`` of ``limit_s``."""
