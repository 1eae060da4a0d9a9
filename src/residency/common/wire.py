"""The message contract between coordinator and nodes: record names and allowed keys.

Both sides import these names, so a key that is not listed here never appears in a reply
(the node's egress guard drops it) and never reaches the coordinator's aggregation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

ARRAYS: Final = "arrays"
CONFIG: Final = "config"
METRICS: Final = "metrics"
NODE: Final = "node"
RECORD: Final = "privacy-record"  # ConfigRecord: the node's signed privacy record
RECORD_BODY: Final = "body"
RECORD_SIGNATURE: Final = "signature"

# MetricRecord of a training reply: the public figures of the privacy statement only. The
# example count is public (the Poisson sample rate reveals it); the training loss and the time
# a round took are not noised, so they never leave the node (docs/privacy.md).
NUM_EXAMPLES: Final = "num-examples"
STEPS: Final = "steps"
EPSILON: Final = "epsilon"
EPSILON_ROUND: Final = "epsilon-round"
DELTA: Final = "delta"
NOISE_MULTIPLIER: Final = "noise-multiplier"
SAMPLE_RATE: Final = "sample-rate"
MAX_GRAD_NORM: Final = "max-grad-norm"
REPLY_METRICS: Final = frozenset(
    {
        NUM_EXAMPLES,
        STEPS,
        EPSILON,
        EPSILON_ROUND,
        DELTA,
        NOISE_MULTIPLIER,
        SAMPLE_RATE,
        MAX_GRAD_NORM,
    }
)

# ConfigRecord of a training reply: identifiers with a fixed, text-free shape.
COUNTRY: Final = "country"
ACCOUNTANT: Final = "accountant"
DATASET_ACCOUNT: Final = "dataset-account"  # keyed by a node secret and the launcher
VERSION: Final = "residency-version"
REPLY_NODE_FIELDS: Final[dict[str, re.Pattern[str]]] = {
    COUNTRY: re.compile(r"[A-Z]{2}"),
    ACCOUNTANT: re.compile(r"prv|rdp"),
    DATASET_ACCOUNT: re.compile(r"[0-9a-f]{64}"),
    VERSION: re.compile(r"[0-9A-Za-z.+_-]{1,40}"),
}

# Error codes of a node's reply. A refusal's reason is a structured code with numeric fields
# (residency.common.refusal), never free text; a fault's reason is one fixed sentence.
REFUSED: Final = 4001  # the node declined the round (budget or policy)
NODE_FAULT: Final = 4002  # the node could not train (its config or data); details stay local
NODE_FAULT_REASON: Final = "node configuration or data invalid (see the node's log)"
WITHHELD_REASON: Final = "node error withheld by the egress guard (see the node's log)"
FIXED_REASONS: Final = frozenset({NODE_FAULT_REASON, WITHHELD_REASON})
"""The only sentences an error reply may carry besides a coded refusal."""

# Flower's round number in the ConfigRecord a node receives; the rest of that record is a
# RoundPlan (residency.common.config.round_plan), built by RoundPlan.record().
SERVER_ROUND: Final = "server-round"


def scalar(metrics: Mapping[str, object], key: str) -> float:
    """A numeric metric as ``float``; ``KeyError`` if absent, ``TypeError`` if not a number."""
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"metric {key!r} is not a number: {value!r}")
    return float(value)
