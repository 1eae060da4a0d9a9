"""The node's policy rules that refuse a round at once, before any charge.

A fraction of a second each; the rules that first search the noise or compose the whole job,
and the node's durable budget round after round, are in ``tests/node/test_node_budget.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node_policy import assert_the_policy_refuses_before_any_charge
from residency.common.config.job import Job, load_job
from toy_federation import write_toy_job

pytestmark = pytest.mark.usefixtures("flower_task")


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return load_job(write_toy_job(tmp_path / "job", countries=("DE",), examples=60, rounds=2))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("rules", "phrase"),
    [
        pytest.param(
            'allowed_updates = ["full"]', "update lora not allowed (full only)", id="update"
        ),
        pytest.param("max_delta = 1e-6", "delta 0.0001 above 1e-06", id="delta"),
        pytest.param(
            "min_examples_per_round = 1000", "60 examples, fewer than 1000", id="examples"
        ),
    ],
)
def test_policy_rules_refuse_before_any_charge(
    job: Job, tmp_path: Path, rules: str, phrase: str
) -> None:
    assert_the_policy_refuses_before_any_charge(job, tmp_path, rules, phrase)
