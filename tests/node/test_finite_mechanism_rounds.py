"""No number the coordinator chooses turns one record into a non-finite update: whole rounds.

Issue 24.1's attacks, run through the node's ClientApp on D and on D plus the candidate record
(seconds each): a hostile feature transform or head weight is refused before any charge, the
same whatever the data, and the most extreme transform within the bounds gives finite updates
of the same shapes. The bounds themselves, and the mechanism fed such numbers directly, are
checked in ``tests/unit/test_finite_mechanism.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from finite_mechanism_attack import FLT_MAX, candidate_job, transform_of
from node_harness import node_file, signed_record, train_round, update_of
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.common.config.job import Job
from residency.common.config.round_plan import FEATURE_CENTRE_BOUND, FEATURE_SCALE_FLOOR
from residency.common.errors import PolicyViolation
from residency.common.model import WEIGHT_BOUND, ModelSpec, build_classifier, trainable_state
from residency.common.refusal import RefusalCode
from toy_federation import WIDTH
from warm_start_job import WARM

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


def _nodes(tmp_path: Path) -> dict[str, Path]:
    """Two nodes, one on D and one on D plus the candidate, each with its own budget."""
    return {
        name: node_file(tmp_path, 20.0, data=data, state=f"state-{name}", name=f"{name}.toml")
        for name, data in (("without", "job/de.csv"), ("with", "job/de-plus.csv"))
    }


def _charges(tmp_path: Path, name: str) -> int:
    return len(BudgetStore(tmp_path / f"state-{name}" / STORE_FILE).charges())


def _head_arrays(job: Job) -> dict[str, np.ndarray]:
    model = build_classifier(ModelSpec.from_job(job))
    return {name: t.numpy().copy() for name, t in trainable_state(model).items()}


@pytest.mark.node
@pytest.mark.parametrize("hostile", ["subnormal-scale", "centre-outside"])
def test_a_hostile_feature_transform_is_refused_before_any_charge_whatever_the_data(
    tmp_path: Path, hostile: str
) -> None:
    """Attack (a): ``scale[j] = (tau + 2) / FLT_MAX``, ``centre[j] = -2`` on one dimension."""
    job = candidate_job(tmp_path, WARM)
    centre = np.zeros(WIDTH, np.float32)
    scale = np.full(WIDTH, 0.2, np.float32)
    if hostile == "subnormal-scale":
        scale[3] = np.float32(1e-41)  # subnormal, and positive: the old check let it pass
    else:
        centre[3] = -2.0
    reasons = []
    for name, settings in _nodes(tmp_path).items():
        train_round(job, settings, run_id=1, server_round=1)  # the release
        with pytest.raises(PolicyViolation) as refused:
            train_round(
                job,
                settings,
                run_id=1,
                server_round=2,
                overrides=transform_of(centre, scale),
                arrays=_head_arrays(job),
            )
        assert refused.value.refusal.code is RefusalCode.INVALID_PLAN
        assert _charges(tmp_path, name) == 1  # the release only
        reasons.append(str(refused.value))
    assert reasons[0] == reasons[1]


@pytest.mark.node
def test_an_extreme_transform_within_the_bounds_gives_finite_updates_with_or_without_a_record(
    tmp_path: Path,
) -> None:
    """Attack (b): the smallest scale and farthest centre allowed, head weights at the bound."""
    job = candidate_job(tmp_path, WARM)
    centre = np.zeros(WIDTH, np.float32)
    scale = np.full(WIDTH, FEATURE_SCALE_FLOOR, np.float32)
    centre[3] = -FEATURE_CENTRE_BOUND
    arrays = _head_arrays(job)
    arrays["classifier.weight"][0, :] = WEIGHT_BOUND
    arrays["classifier.weight"][1, :] = -WEIGHT_BOUND
    sent = {}
    for name, settings in _nodes(tmp_path).items():
        train_round(job, settings, run_id=1, server_round=1)
        reply = train_round(
            job,
            settings,
            run_id=1,
            server_round=2,
            overrides=transform_of(centre, scale),
            arrays=arrays,
        )
        assert not reply.has_error()
        sent[name] = update_of(reply)
        assert signed_record(reply).steps > 0
    assert {k: (v.shape, v.dtype) for k, v in sent["with"].items()} == {
        k: (v.shape, v.dtype) for k, v in sent["without"].items()
    }
    for update in sent.values():
        assert all(np.isfinite(value).all() for value in update.values())


@pytest.mark.node
def test_a_head_weight_of_flt_max_over_a_is_refused_before_any_charge_whatever_the_data(
    tmp_path: Path,
) -> None:
    """Attack (c), at the node: a plain ``head`` job with one head weight of ``FLT_MAX / a``."""
    job = candidate_job(tmp_path, 'update = "head"')
    arrays = _head_arrays(job)
    arrays["classifier.weight"][0, 3] = np.float32(FLT_MAX / 2)
    reasons = []
    for name, settings in _nodes(tmp_path).items():
        with pytest.raises(PolicyViolation) as refused:
            train_round(job, settings, run_id=1, server_round=1, arrays=arrays)
        assert refused.value.refusal.code is RefusalCode.INVALID_PLAN
        assert _charges(tmp_path, name) == 0
        reasons.append(str(refused.value))
    assert reasons[0] == reasons[1]
    assert "classifier.weight" in reasons[0]
