"""Why a node declined a round, as a code and numbers: the only refusal text that leaves a node.

A free-text reason is an exfiltration channel (a file path or a patient's name is plain
ASCII too), so a refusal crosses the wire as canonical JSON holding one :class:`RefusalCode`
and that code's numeric fields, nothing else. The node's egress guard lets a reason out only
if it decodes here; the coordinator renders it into a sentence with :func:`describe`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class RefusalCode(StrEnum):
    """Every reason a node may give for declining a round."""

    NOT_IN_JOB = "not-in-job"
    TARGET_ABOVE_BUDGET = "target-above-budget"
    DELTA_ABOVE_LIMIT = "delta-above-limit"
    UPDATE_NOT_ALLOWED = "update-not-allowed"
    MODEL_NOT_ALLOWED = "model-not-allowed"
    DELTA_ABOVE_POLICY = "delta-above-policy"
    TOO_FEW_EXAMPLES = "too-few-examples"
    DELTA_TOO_LARGE_FOR_DATA = "delta-too-large-for-data"
    NOISE_BELOW_POLICY = "noise-below-policy"
    TARGET_UNREACHABLE = "target-unreachable"
    JOB_BUDGET = "job-budget"
    DATASET_BUDGET = "dataset-budget"
    JOB_UNAFFORDABLE = "job-unaffordable"
    INVALID_PLAN = "invalid-plan"
    UNTRUSTED_JOB = "untrusted-job"
    JOB_EXPIRED = "job-expired"
    SCHEMA_MISMATCH = "schema-mismatch"
    NO_USABLE_DATA = "no-usable-data"
    ROUND_CLOSED = "round-closed"
    UNIT_MIXED = "unit-mixed"
    UNIT_BELOW_POLICY = "unit-below-policy"


FIELDS: Mapping[RefusalCode, tuple[str, ...]] = {
    RefusalCode.NOT_IN_JOB: (),
    RefusalCode.TARGET_ABOVE_BUDGET: ("target", "budget"),
    RefusalCode.DELTA_ABOVE_LIMIT: ("delta", "limit"),
    RefusalCode.UPDATE_NOT_ALLOWED: (),
    RefusalCode.MODEL_NOT_ALLOWED: (),
    RefusalCode.DELTA_ABOVE_POLICY: ("delta", "limit"),
    RefusalCode.TOO_FEW_EXAMPLES: ("examples", "minimum"),
    RefusalCode.DELTA_TOO_LARGE_FOR_DATA: ("delta", "examples"),
    RefusalCode.NOISE_BELOW_POLICY: ("noise", "minimum"),
    RefusalCode.TARGET_UNREACHABLE: ("target",),
    RefusalCode.JOB_BUDGET: ("budget", "spent", "needed"),
    RefusalCode.DATASET_BUDGET: ("budget", "spent", "needed"),
    RefusalCode.JOB_UNAFFORDABLE: ("budget", "committed", "needed"),
    RefusalCode.INVALID_PLAN: (),
    RefusalCode.UNTRUSTED_JOB: (),
    RefusalCode.JOB_EXPIRED: (),
    RefusalCode.SCHEMA_MISMATCH: ("text_column", "label_column", "labels"),
    RefusalCode.NO_USABLE_DATA: (),
    RefusalCode.ROUND_CLOSED: ("waited",),
    RefusalCode.UNIT_MIXED: (),
    RefusalCode.UNIT_BELOW_POLICY: (),
}
"""The numeric fields each code carries, exactly (no more, no fewer)."""

_TEMPLATES: Mapping[RefusalCode, str] = {
    RefusalCode.NOT_IN_JOB: "the job does not name this node's country",
    RefusalCode.TARGET_ABOVE_BUDGET: (
        "target epsilon {target:g} exceeds the node's budget {budget:g}"
    ),
    RefusalCode.DELTA_ABOVE_LIMIT: "delta {delta:g} exceeds the node's limit {limit:g}",
    RefusalCode.UPDATE_NOT_ALLOWED: "the node's policy does not allow this update kind",
    RefusalCode.MODEL_NOT_ALLOWED: "the job's model is not one the node's operator listed",
    RefusalCode.DELTA_ABOVE_POLICY: "delta {delta:g} above the policy's {limit:g}",
    RefusalCode.TOO_FEW_EXAMPLES: "{examples:g} examples, fewer than the policy's {minimum:g}",
    RefusalCode.DELTA_TOO_LARGE_FOR_DATA: "delta {delta:g} is not below 1/{examples:g} examples",
    RefusalCode.NOISE_BELOW_POLICY: (
        "noise multiplier {noise:.3f} below the policy's minimum {minimum:g}"
    ),
    RefusalCode.TARGET_UNREACHABLE: "no noise multiplier reaches target epsilon {target:g}",
    RefusalCode.JOB_BUDGET: "job budget {budget:.2f}, spent {spent:.2f}, round needs {needed:.2f}",
    RefusalCode.DATASET_BUDGET: (
        "dataset budget {budget:.2f}, spent {spent:.2f}, round needs {needed:.2f}"
    ),
    RefusalCode.JOB_UNAFFORDABLE: (
        "dataset budget {budget:.2f}, {committed:.2f} spent or held for other jobs, the whole "
        "job needs {needed:.2f} more"
    ),
    RefusalCode.INVALID_PLAN: "the round's privacy or training parameters are out of bounds",
    RefusalCode.UNTRUSTED_JOB: (
        "the job is unsigned, signed by a launcher the node does not trust, or not as signed"
    ),
    RefusalCode.JOB_EXPIRED: "the job is past the expiry its launcher signed",
    RefusalCode.SCHEMA_MISMATCH: (
        "the job's {fields} differ from the schema the node's operator declared in node.toml"
    ),
    RefusalCode.NO_USABLE_DATA: "the node's data file has no usable records (its operator's fix)",
    RefusalCode.ROUND_CLOSED: (
        "the round closed while the node trained another round ({waited:.0f} s); not charged"
    ),
    RefusalCode.UNIT_MIXED: (
        "the dataset's budget account was spent in another privacy unit than node.toml's "
        "(the operator opens a new account with `residency node budget reset`)"
    ),
    RefusalCode.UNIT_BELOW_POLICY: (
        "the node's policy requires person-level DP and its node.toml protects records"
    ),
}


@dataclass(frozen=True)
class Refusal:
    """A refusal code and its numbers; checked when built, so a bad one cannot exist."""

    code: RefusalCode
    values: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.values) != set(FIELDS[self.code]):
            raise ValueError(
                f"refusal {self.code.value}: fields {sorted(self.values)}, "
                f"expected {list(FIELDS[self.code])}"
            )
        for name, value in self.values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"refusal {self.code.value}: {name} is not a number")
            if not math.isfinite(value):
                raise ValueError(f"refusal {self.code.value}: {name} is not finite")

    def encode(self) -> str:
        """Canonical JSON: the code, then the numbers in the code's own field order."""
        body: dict[str, object] = {"code": self.code.value}
        body.update({name: float(self.values[name]) for name in FIELDS[self.code]})
        return json.dumps(body, separators=(",", ":"), allow_nan=False)

    def sentence(self) -> str:
        """The refusal in words, without who refused which round."""
        if self.code is RefusalCode.SCHEMA_MISMATCH:  # which of its fields, each a 0/1 flag
            names = {"text_column": "text column", "label_column": "label column"}
            differ = [names.get(k, "labels (or their order)") for k, v in self.values.items() if v]
            fields = ", ".join(differ) or "text column, label column or labels"
            return _TEMPLATES[self.code].format(fields=fields)
        return _TEMPLATES[self.code].format(**self.values)


def decode(reason: str) -> Refusal:
    """Parse a wire reason; ``ValueError`` unless it is exactly an encoded refusal."""
    if len(reason) > 512:
        raise ValueError("refusal reason too long")
    try:
        body = json.loads(reason)
    except json.JSONDecodeError as exc:
        raise ValueError("refusal reason is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        raise ValueError("refusal reason has no code")
    try:
        code = RefusalCode(body.pop("code"))
    except ValueError as exc:
        raise ValueError("unknown refusal code") from exc
    refusal = Refusal(code, body)
    if refusal.encode() != reason:
        raise ValueError("refusal reason is not in canonical form")
    return refusal


def describe(reason: str, *, country: str, server_round: int) -> str:
    """The coordinator's sentence for a node's wire reason (never the raw text if it is bad)."""
    try:
        refusal = decode(reason)
    except ValueError:
        return f"{country} refused round {server_round} (reason not readable)"
    return f"{country} refused round {server_round}: {refusal.sentence()}"
