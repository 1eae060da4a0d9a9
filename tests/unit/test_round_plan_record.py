"""The round contract has one source: the wire record is the node's own model, dumped.

``round_config`` builds a :class:`RoundPlan` from the job and dumps it, so what the
coordinator sends is what the node validates, field for field, and a plan the node would
refuse is refused before it is sent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from residency.common.config.job import load_job
from residency.common.config.round_plan import RoundPlan, feature_transform_bytes, round_config
from residency.common.config.signed_job import SignedJob
from residency.common.model import ModelSpec
from residency.common.wire import SERVER_ROUND
from toy_federation import write_toy_job

pytestmark = pytest.mark.unit

SIGNED = SignedJob(body="{}", launcher="ab" * 32, signature="cd" * 64)


@pytest.mark.parametrize(
    "train",
    ['update = "lora"', 'update = "head"\nwarm_start = "prototypes"', 'update = "prototypes"'],
)
def test_what_the_coordinator_sends_is_what_the_node_reads_back(tmp_path: Path, train: str) -> None:
    job = load_job(write_toy_job(tmp_path, train=train, schedule=False))
    transform = b""
    if job.train.warm_start is not None:
        transform = feature_transform_bytes(np.zeros(4), np.ones(4))
    record = round_config(
        job, base_fingerprint="0" * 64, feature_transform=transform, signed=SIGNED
    )
    first = 2 if transform else 1
    plan = RoundPlan.from_record({**record, SERVER_ROUND: first})
    assert plan == RoundPlan.for_job(
        job,
        server_round=first,
        base_fingerprint="0" * 64,
        feature_transform=transform,
        signed=SIGNED,
    )
    assert plan.record() == record
    aliases = {f.alias or name for name, f in RoundPlan.model_fields.items()}
    per_message = {SERVER_ROUND, "job-ended", "refine"} | ({"feature-transform"} - set(record))
    assert set(record) == aliases - per_message  # every other plan field comes from the job
    assert all(isinstance(v, str | int | float | bytes | list) for v in record.values())
    assert ModelSpec.from_plan(plan) == ModelSpec.from_job(job)


def test_a_plan_the_node_would_refuse_is_never_built(tmp_path: Path) -> None:
    job = load_job(write_toy_job(tmp_path, train='update = "lora"', schedule=False))
    transform = feature_transform_bytes(np.zeros(4), np.ones(4))
    with pytest.raises(ValidationError, match="feature transform sent without a warm start"):
        round_config(job, base_fingerprint="0" * 64, feature_transform=transform)
