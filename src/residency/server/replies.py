"""What one node's reply says about its round, before any of it is averaged.

A reply is an error (refused, or a fault), or content whose country must be the one the
node's key was admitted for; only what the reply itself carries is kept, and an error's own
text never is (:func:`residency.server.node_errors.error_sentence` renders it from its code).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict

from residency.common import wire
from residency.server.node_errors import error_sentence
from residency.server.results import NodeRound, NodeStatus


@dataclass
class Countries:
    """Node id to country: admitted ones (deployment) are fixed, others learned from replies."""

    names: dict[int, str]
    admitted: Mapping[int, str]

    def of(self, node_id: int) -> str:
        """The country ``node_id`` speaks for, or ``node-N`` until one of its replies says."""
        return self.admitted.get(node_id) or self.names.get(node_id, f"node-{node_id}")

    def impostor(self, node_id: int, reported: str) -> str | None:
        """Why a reply's country contradicts the node's admission, if it does."""
        expected = self.admitted.get(node_id)
        if expected is None or expected == reported:
            return None
        return f"reports country {reported} but its key was admitted for {expected}"


def record_bytes(content: RecordDict) -> int:
    """Serialised bytes of a message's records: what ``bytes_up`` and ``bytes_down`` count."""
    return sum(
        record.count_bytes()
        for records in (content.array_records, content.metric_records, content.config_records)
        for record in records.values()
    )


def node_round(
    reply: Message, bytes_down: int, countries: Countries, *, server_round: int
) -> NodeRound:
    """What one reply says about its node's round; an error's own text is never kept."""
    node_id = reply.metadata.src_node_id
    if reply.has_error():
        code = reply.error.code
        country = countries.of(node_id)
        return NodeRound(
            country=country,
            status=NodeStatus.REFUSED if code == wire.REFUSED else NodeStatus.FAILED,
            bytes_down=bytes_down,
            reason=error_sentence(
                code, reply.error.reason or "", country=country, server_round=server_round
            ),
        )
    content = reply.content
    node = content.config_records.get(wire.NODE, ConfigRecord())
    reported = node.get(wire.COUNTRY, countries.of(node_id))
    country = reported if isinstance(reported, str) else ""
    if wire.COUNTRY in node and not wire.REPLY_NODE_FIELDS[wire.COUNTRY].fullmatch(country):
        problem: str | None = "reports a malformed country code"  # its text is not shown
    else:
        problem = countries.impostor(node_id, country)
    if problem is not None:
        return NodeRound(
            country=countries.of(node_id),
            status=NodeStatus.REJECTED,
            bytes_up=record_bytes(content),
            bytes_down=bytes_down,
            reason=problem,
        )
    countries.names[node_id] = country
    metrics = content.metric_records.get(wire.METRICS)

    def metric(key: str) -> float | None:
        value = metrics.get(key) if metrics is not None else None
        return float(value) if isinstance(value, int | float) else None

    examples, steps = metric(wire.NUM_EXAMPLES), metric(wire.STEPS)
    return NodeRound(
        country=country,
        status=NodeStatus.OK,
        examples=None if examples is None else int(examples),
        epsilon=metric(wire.EPSILON),
        epsilon_round=metric(wire.EPSILON_ROUND),
        noise_multiplier=metric(wire.NOISE_MULTIPLIER),
        sample_rate=metric(wire.SAMPLE_RATE),
        steps=None if steps is None else int(steps),
        bytes_up=record_bytes(content),
        bytes_down=bytes_down,
    )
