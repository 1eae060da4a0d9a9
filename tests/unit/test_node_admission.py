"""Nothing is charged that cannot count: bad plans are refused first, check and charge are one.

The plan search through the ClientApp and the two-process race (seconds each) are in
``tests/node/test_node_admission_races.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from node_harness import node_file, train_round
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.client.node_config import load_node_settings
from residency.common.config.job import Job, load_job
from residency.common.errors import PolicyViolation
from residency.common.refusal import RefusalCode
from toy_federation import write_toy_job


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return load_job(write_toy_job(tmp_path / "job", countries=("DE",), examples=40, rounds=1))


@pytest.mark.unit
@pytest.mark.parametrize(
    "overrides",
    [
        {"max-grad-norm": math.inf},
        {"max-grad-norm": math.nan},
        {"max-grad-norm": 0.0},
        {"max-grad-norm": 1e9},
        {"target-epsilon": math.inf},
        {"learning-rate": math.nan},
        {"delta": math.nan},
        {"batch-size": 0},
        {"update": "full", "transfer-dtype": "float16"},
        {"update": "prototypes", "rounds": 3},
        {"accountant": "bogus"},
        {"countries": ["DE"], "seed": "not a number"},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_an_out_of_bounds_plan_is_refused_before_any_charge(
    job: Job, tmp_path: Path, overrides: dict[str, Any]
) -> None:
    settings_file = node_file(tmp_path, 100.0)
    with pytest.raises(PolicyViolation) as refused:
        train_round(job, settings_file, run_id=1, server_round=1, overrides=overrides)
    assert refused.value.refusal.code is RefusalCode.INVALID_PLAN
    store = BudgetStore(tmp_path / "state" / STORE_FILE)
    assert store.charges() == []
    assert len(store.refusals()) == 1


@pytest.mark.unit
@pytest.mark.parametrize("model", ["/etc", "/nonexistent/checkpoint", "relative/folder", "../x"])
def test_a_model_path_the_operator_did_not_list_is_refused_unread(
    job: Job, tmp_path: Path, model: str
) -> None:
    listed = tmp_path / "checkpoints" / "bert"
    settings_file = node_file(tmp_path, 100.0, extra=f'models = ["{listed}"]\n')
    with pytest.raises(PolicyViolation) as refused:
        train_round(job, settings_file, run_id=1, server_round=1, overrides={"model": model})
    # Refused as not listed, not as a missing or unreadable checkpoint: nothing was read.
    assert refused.value.refusal.code is RefusalCode.MODEL_NOT_ALLOWED
    assert BudgetStore(tmp_path / "state" / STORE_FILE).charges() == []
    assert load_node_settings(settings_file).may_load(str(listed))
    assert load_node_settings(settings_file).may_load(f"{listed}/../bert")
