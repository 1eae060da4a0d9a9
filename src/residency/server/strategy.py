"""The coordinator's strategy: each reply validated first, then Flower's aggregation.

A training round's valid updates are combined by the job's ``[train] aggregation``: Flower's
own ``FedAvg``, ``FedTrimmedAvg`` or ``FedMedian``, handed only the replies that passed
validation. For ``update = "prototypes"`` the validated releases are combined (summed, with
each node's means kept) instead, whatever the aggregation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg

from residency.common import wire
from residency.common.config.job import DEFAULT_TRIM_FRACTION
from residency.common.config.kinds import Aggregation, Combine
from residency.common.errors import InvalidUpdate
from residency.common.updates import prototypes
from residency.server.node_errors import error_sentence
from residency.server.validation import validate_reply, validate_update_norm

log = logging.getLogger("residency.coordinator")


MAX_REPORTED_NOISE = 1e4
"""A reported noise multiplier above this is a typo or an attack, not a release's noise."""


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


def flower_aggregator(aggregation: Aggregation, *, trim_fraction: float) -> FedAvg:
    """Flower's strategy for ``aggregation``, used only for its ``aggregate_train``.

    FedAvg weights each update by the reply's ``num-examples`` metric (the metric named by
    ``weighted_by_key``). ``FedTrimmedAvg`` (``beta`` = ``trim_fraction``) and ``FedMedian``
    ignore it: every update counts once.
    """
    keys: dict[str, Any] = {
        "weighted_by_key": wire.NUM_EXAMPLES,
        "arrayrecord_key": wire.ARRAYS,
        "configrecord_key": wire.CONFIG,
        "train_metrics_aggr_fn": no_mean,
    }
    if aggregation is Aggregation.MEDIAN:
        return FedMedian(**keys)
    if aggregation is Aggregation.TRIMMED_MEAN:
        return FedTrimmedAvg(**keys, beta=trim_fraction)
    return FedAvg(**keys)


class ValidatingStrategy:
    """Every update checked against the arrays it answers, then Flower's aggregation.

    Holds Flower's strategy for the job's ``[train] aggregation`` (:func:`flower_aggregator`)
    and hands it only the replies that passed validation; the coordinator's round loop picks
    the nodes and sends the messages itself (with deadlines), so none of Flower's sampling or
    waiting is used. FedAvg weights each update by the reply's ``num-examples``, which the
    coordinator lets through only once ``received_record`` has checked it equals the example
    count in the node's signed privacy record (its declared public size, not its exact
    count): a node cannot claim a larger share of the average than its record states. With
    ``max_update_norm`` set, a training update farther than that (L2, all tensors) from the
    arrays sent is rejected like any other invalid reply.
    """

    def __init__(
        self,
        *,
        combine: Combine = Combine.FEDAVG,
        aggregation: Aggregation = Aggregation.FEDAVG,
        trim_fraction: float | None = None,
        max_update_norm: float | None = None,
    ) -> None:
        self.combine = combine
        self.aggregator = flower_aggregator(
            aggregation,
            trim_fraction=DEFAULT_TRIM_FRACTION if trim_fraction is None else trim_fraction,
        )
        self.max_update_norm = max_update_norm
        self._sent = ArrayRecord()
        self.accepted: list[Message] = []
        self.rejected: list[Rejection] = []
        self.refining = False  # the release again: combine each node's two releases
        self._releases: dict[int, tuple[dict[str, np.ndarray], float | None]] = {}

    def train_messages(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        node_ids: Iterable[int],
        *,
        ttl_s: float,
    ) -> list[Message]:
        """One train message per node the coordinator chose, living only as long as the round.

        Flower's ``configure_train`` samples nodes and waits, without a deadline, until
        ``min_available_nodes`` are connected; the coordinator picks the round's nodes itself
        (with deadlines) instead. A message outlives its round nowhere: after ``ttl_s`` the
        SuperLink no longer hands it out, so a node that comes back late cannot train (and
        charge) a round that has closed. The arrays sent are kept to validate the replies.
        """
        self._sent = arrays
        config["server-round"] = server_round
        content = RecordDict({wire.ARRAYS: arrays, wire.CONFIG: config})
        return [
            Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node, ttl=ttl_s)
            for node in node_ids
        ]

    def check(self, reply: Message, server_round: int) -> str | None:
        """Why a reply's update cannot be averaged (``None``: it can), against what was sent.

        In a training round every valid update's norm is logged (the run log), which is what
        a ``max_update_norm`` is chosen from. The round loop asks this as each reply arrives,
        so a reply gets its one verdict at once.
        """
        node = reply.metadata.src_node_id
        try:
            validate_reply(reply.content, self._sent)
            if self.combine is not Combine.PROTOTYPES:
                norm = validate_update_norm(
                    reply.content.array_records[wire.ARRAYS], self._sent, bound=self.max_update_norm
                )
                log.info("round %d: node %d update norm %.4g", server_round, node, norm)
        except InvalidUpdate as exc:
            log.warning("round %d: update from node %d rejected: %s", server_round, node, exc)
            return f"update rejected: {exc}"
        return None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message], *, checked: bool = False
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop invalid replies and errors, then combine the rest with the job's aggregation.

        ``checked``: every reply already passed :meth:`check` (the round loop's case).
        """
        self.accepted, self.rejected = [], []
        training = self.combine is not Combine.PROTOTYPES
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                code = reply.error.code
                said = error_sentence(
                    code,
                    reply.error.reason or "",
                    country=f"node {node}",
                    server_round=server_round,
                )
                self.rejected.append(Rejection(node, said, code == wire.REFUSED))
                continue
            invalid = None if checked else self.check(reply, server_round)
            if invalid is not None:
                self.rejected.append(Rejection(node, invalid, refused=False))
                continue
            self.accepted.append(reply)
        if not self.accepted:
            return None, None
        if not training:  # statistics add up; a mean would shrink them
            return self._combined_releases(), MetricRecord()
        return self.aggregator.aggregate_train(server_round, self._float32_copies())

    def _combined_releases(self) -> ArrayRecord:
        """The federation's statistics from every node's latest release (refined: both).

        Each node's releases are kept by node id; a refining release is averaged with the
        node's first by the inverse of their noise variances (:func:`prototypes.refined`), and
        a node that did not refine keeps its first.
        """
        for reply in self.accepted:
            node = reply.metadata.src_node_id
            arrays = reply.content.array_records[wire.ARRAYS]
            release = {name: array.numpy() for name, array in arrays.items()}
            noise = _noise_multiplier(reply)
            first = self._releases.get(node) if self.refining else None
            self._releases[node] = (
                (release, noise) if first is None else prototypes.refined(first, (release, noise))
            )
        kept = list(self._releases.values())
        noises = [noise for _, noise in kept if noise is not None]
        total = prototypes.combined(
            [release for release, _ in kept], noises if len(noises) == len(kept) else None
        )
        return ArrayRecord({name: Array(value) for name, value in total.items()})

    def _float32_copies(self) -> list[Message]:
        """What the aggregator reads: each accepted update in float32, with its metrics.

        Whatever the wire precision, updates are combined in float32. Copies, because Flower's
        median and trimmed mean take the arrays out of the messages they read: the replies in
        ``accepted`` stay as they came.
        """
        copies = []
        for reply in self.accepted:
            arrays = reply.content.array_records[wire.ARRAYS]
            content = RecordDict(
                {
                    wire.ARRAYS: ArrayRecord(
                        {name: Array(a.numpy().astype(np.float32)) for name, a in arrays.items()}
                    ),
                    wire.METRICS: reply.content.metric_records[wire.METRICS],
                }
            )
            node = reply.metadata.src_node_id
            copies.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        return copies


def _noise_multiplier(reply: Message) -> float | None:
    """A release's noise multiplier as its node reported it, or None if missing or unusable.

    It only weighs the class names' prior and a node's two releases in the coordinator's own
    head (the coordinator has checked it equals the signed record's); a node that misstates it
    moves no one's privacy. One unusable value turns the prior off, and two releases without
    both values are averaged equally.
    """
    value = reply.content.metric_records[wire.METRICS].get(wire.NOISE_MULTIPLIER)
    if not isinstance(value, int | float) or not 0 < value <= MAX_REPORTED_NOISE:
        return None
    return float(value)
