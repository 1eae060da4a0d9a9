"""Checks on every node reply before it may influence the global model.

A rejection's reason is kept (``results.json``, the ledger), so it quotes only what the
coordinator itself sent or counts: never a name or value a node chose, which would be a
free-text channel for a node that bypasses its own egress guard.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from residency.common import wire
from residency.common.errors import InvalidUpdate

MAX_EXAMPLES = 10**9


def _decoded(name: str, array: Array) -> np.ndarray:
    try:
        return array.numpy()
    except (ValueError, TypeError, OSError) as exc:
        raise InvalidUpdate(f"{name}: payload cannot be decoded ({type(exc).__name__})") from exc


def validate_update(update: ArrayRecord, expected: ArrayRecord) -> None:
    """Same tensor names, shapes and dtypes as the global model, and only finite values.

    The payload is decoded and checked itself: the declared dtype and shape are only labels.
    """
    if set(update.keys()) != set(expected.keys()):
        missing = sorted(set(expected) - set(update))[:3]
        extra = len(set(update) - set(expected))
        raise InvalidUpdate(f"tensor names differ: missing {missing}, {extra} unexpected")
    for name, ref in expected.items():
        array = update[name]
        if array.stype != ref.stype:
            raise InvalidUpdate(f"{name}: serialisation {array.stype!r} != {ref.stype!r}")
        decoded = _decoded(name, array)
        want = (ref.dtype, tuple(ref.shape))
        for got in ((array.dtype, tuple(array.shape)), (str(decoded.dtype), decoded.shape)):
            if got != want:
                raise InvalidUpdate(f"{name}: {got[0]}{list(got[1])} != {want[0]}{list(want[1])}")
        if not np.isfinite(decoded).all():
            raise InvalidUpdate(f"{name}: contains NaN or infinity")


def validate_metrics(metrics: MetricRecord) -> None:
    """Exactly the contract's metrics, a plausible example count, finite non-negative figures."""
    keys = set(metrics.keys())
    if keys != wire.REPLY_METRICS:
        missing = sorted(wire.REPLY_METRICS - keys)
        extra = len(keys - wire.REPLY_METRICS)
        raise InvalidUpdate(f"metrics differ from the contract: missing {missing}, {extra} extra")
    examples = metrics[wire.NUM_EXAMPLES]
    if isinstance(examples, bool) or not isinstance(examples, int):
        raise InvalidUpdate(f"num-examples must be an integer, not {type(examples).__name__}")
    if not 0 < examples <= MAX_EXAMPLES:
        raise InvalidUpdate(f"implausible num-examples {examples}")
    for key in sorted(wire.REPLY_METRICS - {wire.NUM_EXAMPLES}):
        try:
            value = wire.scalar(metrics, key)
        except TypeError as exc:
            raise InvalidUpdate(f"metric {key!r} is not a number") from exc
        if not math.isfinite(value) or value < 0:
            raise InvalidUpdate(f"{key} is {value}")


def validate_reply(content: RecordDict, expected: ArrayRecord) -> None:
    """A training reply holds exactly the contract's records, each valid."""
    names = set(content.keys())
    unexpected = names - {wire.ARRAYS, wire.METRICS, wire.NODE, wire.RECORD}
    if unexpected:
        raise InvalidUpdate(f"{len(unexpected)} unexpected record(s)")
    if wire.ARRAYS not in content.array_records or wire.METRICS not in content.metric_records:
        raise InvalidUpdate("reply lacks its update arrays or metrics")
    if wire.NODE in names and wire.NODE not in content.config_records:
        raise InvalidUpdate("node record has the wrong type")
    if wire.RECORD in names and wire.RECORD not in content.config_records:
        raise InvalidUpdate("privacy record has the wrong type")
    validate_update(content.array_records[wire.ARRAYS], expected)
    validate_metrics(content.metric_records[wire.METRICS])


def update_norm(update: ArrayRecord, sent: ArrayRecord) -> float:
    """L2 norm of the change, over every tensor at once: the reply's arrays minus those sent.

    Computed in float64 whatever the wire precision; both records must already have passed
    :func:`validate_update` (same names and shapes, finite values).
    """
    total = 0.0
    for name, ref in sent.items():
        change = update[name].numpy().astype(np.float64) - ref.numpy().astype(np.float64)
        total += float(np.dot(change.ravel(), change.ravel()))
    return math.sqrt(total)


def validate_update_norm(update: ArrayRecord, sent: ArrayRecord, *, bound: float | None) -> float:
    """The update's norm (:func:`update_norm`), or ``InvalidUpdate`` when it exceeds ``bound``.

    The reason quotes the norm to three significant figures only: enough to tell an attack
    from a bound set too tight, too little to carry a message of the node's choosing.
    """
    norm = update_norm(update, sent)
    if bound is not None and norm > bound:
        raise InvalidUpdate(f"L2 norm {norm:.3g} exceeds [train] max_update_norm {bound:g}")
    return norm
