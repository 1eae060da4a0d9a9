"""Egress guard: a Flower mod that lets only allow-listed content leave the node.

Whatever the training code put in a reply, only these pass: arrays whose names, shapes and
dtypes match the trainable tensors the coordinator sent, numeric metrics from the wire
contract, identifier fields matching fixed patterns, and one signed privacy record that parses
under its strict schema, in canonical form, with a valid signature. An error leaves only as a
coded refusal (a code and numbers, :mod:`residency.common.refusal`) or one fixed sentence.
Anything else (text, token ids, labels, extra records or fields) is dropped and logged as a
violation.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable

from residency.common import wire
from residency.common.errors import InvalidUpdate
from residency.common.privacy.record import SignedRecord, open_record
from residency.common.refusal import decode

log = logging.getLogger("residency.egress")

GENERIC_REASON = wire.WITHHELD_REASON


def _safe_error(code: int, reason: str) -> str | None:
    """The reason as it may leave, or ``None``: a refusal re-encoded, or a fixed sentence."""
    if code == wire.REFUSED:
        try:
            return decode(reason).encode()
        except ValueError:
            return None
    return reason if reason in wire.FIXED_REASONS else None


def _matches(array: Array, ref: Array) -> bool:
    """Decode the payload itself: declared dtype and shape prove nothing about the bytes."""
    if array.stype != ref.stype:
        return False
    try:
        decoded = array.numpy()
    except (ValueError, TypeError, OSError):
        return False
    return (
        np.issubdtype(decoded.dtype, np.floating)
        and str(decoded.dtype) == ref.dtype == array.dtype
        and tuple(decoded.shape) == tuple(ref.shape) == tuple(array.shape)
    )


def _guard_arrays(sent: ArrayRecord, reply: ArrayRecord) -> ArrayRecord:
    kept = ArrayRecord()
    for name, array in reply.items():
        ref = sent.get(name)
        if ref is None or not _matches(array, ref):
            log.warning("egress violation: array %r dropped (not a trainable tensor)", name)
            continue
        kept[name] = array
    return kept


def _guard_metrics(reply: MetricRecord) -> MetricRecord:
    kept = MetricRecord()
    for key, value in reply.items():
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if key in wire.REPLY_METRICS and numeric and math.isfinite(wire.scalar(reply, key)):
            kept[key] = value
        else:
            log.warning("egress violation: metric %r dropped", key)
    return kept


def _guard_node_fields(reply: ConfigRecord) -> ConfigRecord:
    kept = ConfigRecord()
    for key, value in reply.items():
        pattern = wire.REPLY_NODE_FIELDS.get(key)
        if pattern is not None and isinstance(value, str) and pattern.fullmatch(value):
            kept[key] = value
        else:
            log.warning("egress violation: node field %r dropped", key)
    return kept


def _guard_record(reply: ConfigRecord) -> ConfigRecord | None:
    """The signed record, only if it is exactly a valid one (no room for anything else)."""
    if set(reply) != {wire.RECORD_BODY, wire.RECORD_SIGNATURE}:
        log.warning("egress violation: privacy record with other fields dropped")
        return None
    try:
        open_record(
            SignedRecord.model_validate(
                {"body": reply[wire.RECORD_BODY], "signature": reply[wire.RECORD_SIGNATURE]}
            )
        )
    except (InvalidUpdate, ValueError) as exc:
        log.warning("egress violation: privacy record dropped (%s)", exc)
        return None
    return reply


def guard_reply(instruction: Message, reply: Message) -> Message:
    """Rebuild ``reply`` from its allow-listed parts only."""
    if reply.has_error():
        code = reply.error.code
        safe = _safe_error(code, reply.error.reason or "")
        if safe is not None:
            return Message(Error(code, safe), reply_to=instruction)
        log.warning("egress violation: error reason withheld")
        fallback = wire.NODE_FAULT if code == wire.REFUSED else code
        return Message(Error(fallback, GENERIC_REASON), reply_to=instruction)
    content = reply.content
    sent = instruction.content.array_records.get(wire.ARRAYS, ArrayRecord())
    guarded = RecordDict()
    allowed = (
        (wire.ARRAYS, content.array_records),
        (wire.METRICS, content.metric_records),
        (wire.NODE, content.config_records),
        (wire.RECORD, content.config_records),
    )
    for name in content:
        if not any(name == key and name in records for key, records in allowed):
            log.warning("egress violation: record %r dropped", name)
    if wire.ARRAYS in content.array_records:
        guarded[wire.ARRAYS] = _guard_arrays(sent, content.array_records[wire.ARRAYS])
    if wire.METRICS in content.metric_records:
        guarded[wire.METRICS] = _guard_metrics(content.metric_records[wire.METRICS])
    if wire.NODE in content.config_records:
        guarded[wire.NODE] = _guard_node_fields(content.config_records[wire.NODE])
    if wire.RECORD in content.config_records:
        record = _guard_record(content.config_records[wire.RECORD])
        if record is not None:
            guarded[wire.RECORD] = record
    return Message(guarded, reply_to=instruction)


def egress_guard(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: run the handler, then filter its reply through :func:`guard_reply`.

    An exception escaping the handler would otherwise become an error reply built by Flower
    outside every mod, carrying the exception text (which may quote a record) to the
    coordinator; it is logged here and replaced by a generic reason.
    """
    try:
        reply = call_next(msg, context)
    except Exception:
        log.exception(
            "node error during %s; details withheld from the coordinator", msg.metadata.message_type
        )
        return Message(Error(wire.NODE_FAULT, GENERIC_REASON), reply_to=msg)
    return guard_reply(msg, reply)
