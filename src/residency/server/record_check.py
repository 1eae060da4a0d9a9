"""The coordinator's check of a node's signed privacy record against the reply it came with.

A reply is averaged only if its record parses, is canonical, carries a valid signature, names
this job, run, round and the node's admitted country, reports the epsilon and the example count
its metrics report, the noise multiplier too, and hashes to exactly the arrays that arrived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from pydantic import ValidationError

from residency.common import wire
from residency.common.errors import InvalidUpdate
from residency.common.privacy.record import PrivacyRecord, SignedRecord, open_record
from residency.common.privacy.update_digest import update_sha256


@dataclass(frozen=True)
class Received:
    """A reply's checked record, the hash of what arrived, and the arrays themselves."""

    record: PrivacyRecord
    signed: SignedRecord
    received_sha256: str
    arrays: dict[str, np.ndarray]


def received_record(
    content: RecordDict,
    *,
    job: str,
    run: str,
    server_round: int,
    country: str,
    job_sha256: str | None = None,
) -> Received:
    """Check the record in ``content``; ``InvalidUpdate`` says what is wrong.

    FedAvg weights an update by the reply's unsigned ``num-examples`` metric (the one Flower's
    ``weighted_by_key`` names); requiring it to equal the signed ``record.examples`` makes the
    weight the count the node signed for, so a node cannot inflate its share of the average.
    That count is the node's declared public size (``public_records`` in its ``node.toml``),
    never its exact record count, which would tell whether one record was added.
    """
    config = content.config_records.get(wire.RECORD, ConfigRecord())
    if wire.RECORD_BODY not in config:
        raise InvalidUpdate("no signed privacy record in the reply")
    try:
        signed = SignedRecord.model_validate(
            {"body": config[wire.RECORD_BODY], "signature": config.get(wire.RECORD_SIGNATURE)}
        )
    except ValidationError as exc:
        raise InvalidUpdate("privacy record: malformed signature") from exc
    record = open_record(signed)
    expected: dict[str, object] = {
        "job": job,
        "run": run,
        "round": server_round,
        "country": country,
    }
    if job_sha256 is not None:  # the node ran the job as its launcher signed it
        expected["job_sha256"] = job_sha256
    for field, value in expected.items():
        if getattr(record, field) != value:
            raise InvalidUpdate(
                f"privacy record names {field} {getattr(record, field)!r}, expected {value!r}"
            )
    metrics = content.metric_records.get(wire.METRICS, MetricRecord())
    for name, key, signed_value in (
        ("epsilon", wire.EPSILON, record.epsilon),
        ("noise multiplier", wire.NOISE_MULTIPLIER, record.noise_multiplier),
    ):
        reported = metrics.get(key)
        if not isinstance(reported, int | float) or not math.isclose(reported, signed_value):
            raise InvalidUpdate(f"privacy record {name} differs from the reply's metrics")
    examples = metrics.get(wire.NUM_EXAMPLES)
    if examples is None:
        raise InvalidUpdate(f"reply has no {wire.NUM_EXAMPLES} metric to weight its update by")
    if isinstance(examples, bool) or not isinstance(examples, int):
        raise InvalidUpdate(f"{wire.NUM_EXAMPLES} is not an integer")
    if examples != record.examples:
        raise InvalidUpdate(
            f"{wire.NUM_EXAMPLES} {examples} differs from the {record.examples} examples in the "
            "signed privacy record"
        )
    arrays = {
        name: array.numpy() for name, array in content.array_records.get(wire.ARRAYS, {}).items()
    }
    received = update_sha256(arrays)
    if received != record.update_sha256:
        raise InvalidUpdate("update differs from the hash in the signed privacy record")
    return Received(record, signed, received, arrays)
