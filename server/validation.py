"""Checks on every node reply before it may influence the global model."""

from __future__ import annotations

import math

import numpy as np

from flwr.app import ArrayRecord, MetricRecord

from residency.common import wire
from residency.common.errors import InvalidUpdate

MAX_EXAMPLES = 10**9


def validate_update(update: ArrayRecord, expected: ArrayRecord) -> None:
    """Same tensor names, shapes and dtypes as the global model, and only finite values."""
    if set(update.keys()) != set(expected.keys()):
        missing = sorted(set(expected) - set(update))[:3]
        extra = sorted(set(update) - set(expected))[:3]
        raise InvalidUpdate(f"tensor names differ: missing {missing}, unexpected {extra}")
    for name, ref in expected.items():
        array = update[name]
        if array.dtype != ref.dtype or tuple(array.shape) != tuple(ref.shape):
            raise InvalidUpdate(
                f"{name}: {array.dtype}{list(array.shape)} != {ref.dtype}{list(ref.shape)}"
            )
        if not np.isfinite(array.numpy()).all():
            raise InvalidUpdate(f"{name}: contains NaN or infinity")


def validate_metrics(metrics: MetricRecord) -> None:
    """Plausible example count and well-formed privacy figures."""
    missing = sorted(wire.REPLY_METRICS - set(metrics.keys()))
    if missing:
        raise InvalidUpdate(f"metrics missing: {', '.join(missing)}")
    examples = metrics[wire.NUM_EXAMPLES]
    if not isinstance(examples, int) or not 0 < examples <= MAX_EXAMPLES:
        raise InvalidUpdate(f"implausible num-examples {examples!r}")
    for key in (wire.EPSILON, wire.EPSILON_ROUND, wire.NOISE_MULTIPLIER, wire.SAMPLE_RATE):
        value = float(metrics[key])  # type: ignore[arg-type]
        if not math.isfinite(value) or value < 0:
            raise InvalidUpdate(f"{key} is {value}")
