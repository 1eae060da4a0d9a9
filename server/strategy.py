"""FedAvg that validates each reply first and remembers what every node reported.

For ``update = "prototypes"`` the validated releases are combined (summed, with each node's
means kept) instead of averaged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from residency.common import wire
from residency.common.errors import InvalidUpdate
from residency.common.updates import Combine, prototypes
from residency.server.node_errors import error_sentence
from residency.server.validation import validate_reply

log = logging.getLogger("residency.coordinator")


@dataclass(frozen=True)
class Rejection:
    """A reply that did not take part in aggregation, and why."""

    node_id: int
    reason: str
    refused: bool  # the node declined (budget, policy) rather than failed


def no_mean(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """No reply metric is averaged: each is one country's own privacy figure.

    Flower's default would average epsilons, deltas and noise multipliers across countries,
    which means nothing. The figures a mean would suit, training loss and time, are not
    noised, so they never leave a node.
    """
    return MetricRecord()


class ValidatingFedAvg(FedAvg):
    """Flower's FedAvg, with every update checked against the arrays it answers.

    Each update is weighted by the reply's ``num-examples`` metric (Flower's FedAvg reads the
    metric named by ``weighted_by_key``). The coordinator averages a reply only once
    ``received_record`` has checked that metric equals the example count in the node's signed
    privacy record, so the weight is the signed count: a node cannot claim a larger share of
    the average than its record states.
    """

    def __init__(self, *, nodes: int, combine: Combine = Combine.FEDAVG) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=nodes,
            min_available_nodes=nodes,
            weighted_by_key=wire.NUM_EXAMPLES,
            arrayrecord_key=wire.ARRAYS,
            configrecord_key=wire.CONFIG,
            train_metrics_aggr_fn=no_mean,
        )
        self.combine = combine
        self._sent = ArrayRecord()
        self.accepted: list[Message] = []
        self.rejected: list[Rejection] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the arrays sent, to validate the replies against them."""
        self._sent = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop invalid replies and errors, then average the rest with FedAvg."""
        self.accepted, self.rejected = [], []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                code = reply.error.code
                reason = error_sentence(
                    code,
                    reply.error.reason or "",
                    country=f"node {node}",
                    server_round=server_round,
                )
                self.rejected.append(Rejection(node, reason, code == wire.REFUSED))
                continue
            try:
                validate_reply(reply.content, self._sent)
            except InvalidUpdate as exc:
                log.warning("round %d: update from node %d rejected: %s", server_round, node, exc)
                self.rejected.append(Rejection(node, f"update rejected: {exc}", refused=False))
                continue
            self.accepted.append(reply)
        if not self.accepted:
            return None, None
        if self.combine is Combine.PROTOTYPES:  # statistics add up; a mean would shrink them
            releases = [
                {
                    name: array.numpy()
                    for name, array in r.content.array_records[wire.ARRAYS].items()
                }
                for r in self.accepted
            ]
            total = prototypes.combined(releases)
            return ArrayRecord(
                {name: Array(value) for name, value in total.items()}
            ), MetricRecord()
        for reply in self.accepted:  # average in float32 whatever the wire precision
            arrays = reply.content.array_records[wire.ARRAYS]
            reply.content.array_records[wire.ARRAYS] = ArrayRecord(
                {name: Array(array.numpy().astype(np.float32)) for name, array in arrays.items()}
            )
        return super().aggregate_train(server_round, self.accepted)
