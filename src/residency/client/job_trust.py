"""A node runs only jobs a launcher its operator trusts signed, exactly as they were signed.

The coordinator relays the signed job with every round plan. Before anything is charged the
node checks the signature against ``trusted_launchers`` in its own ``node.toml`` (never a
list the coordinator sends), then rebuilds the plan's job-derived fields from the signed job
and refuses any difference: a coordinator can neither launch a job on its own nor change one
it relays (a lower epsilon target, another model, more rounds...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from residency.client.node_config import NodeSettings
from residency.common.config.round_plan import RoundPlan, round_config
from residency.common.config.signed_job import ExpiredJob, SignedJob, UntrustedJob, open_job
from residency.common.errors import PolicyViolation
from residency.common.refusal import Refusal, RefusalCode

PER_ROUND = frozenset({"server-round", "job-ended"})
"""Plan fields the coordinator sets per message; the signature covers the base fingerprint and
feature transform indirectly (the model the job names, the release's statistics). A job's end
only frees what the node holds for it, so whoever may send the signed job may say it."""


def signed_plan(plan: RoundPlan, record: Mapping[str, Any], settings: NodeSettings) -> SignedJob:
    """The signed job ``record`` (the plan as received) belongs to, or a refusal."""
    refused = f"{settings.country} refused round {plan.server_round}"
    try:
        signed = plan.signed
        job = open_job(signed, settings.trusted_launchers, operator="node.toml")
    except (UntrustedJob, ValidationError) as exc:
        reason = str(exc) if isinstance(exc, UntrustedJob) else "job: malformed signature"
        code = RefusalCode.JOB_EXPIRED if isinstance(exc, ExpiredJob) else RefusalCode.UNTRUSTED_JOB
        raise PolicyViolation(f"{refused}: {reason}", Refusal(code)) from exc
    assert signed is not None  # open_job refuses a plan without one
    try:
        expected = round_config(
            job,
            base_fingerprint=plan.base_fingerprint,
            feature_transform=plan.feature_transform,
            signed=signed,
            refine=plan.refine,  # the coordinator's choice; the node prices it (admission.py)
            first_round=plan.server_round,
        )
    except ValidationError:  # the job's own plan would not take what the coordinator added
        expected = {}
    differs = sorted(
        key
        for key in expected.keys() | set(record.keys())
        if key not in PER_ROUND and expected.get(key) != record.get(key)
    )
    if differs:
        raise PolicyViolation(
            f"{refused}: the round plan differs from the job its launcher signed "
            f"({', '.join(differs)})",
            Refusal(RefusalCode.UNTRUSTED_JOB),
        )
    return signed
