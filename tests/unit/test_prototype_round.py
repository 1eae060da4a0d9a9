"""A node's prototype release: one charged step; only statistics leave; one account for all.

Releases composed with DP-SGD rounds, through whole rounds, are in
``tests/node/test_prototype_round_composition.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node_harness import node_file, signed_record, train_round, update_of
from prototype_release import EXAMPLES, one_round_job
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.common.config.kinds import AccountantKind
from residency.common.errors import PolicyViolation
from residency.common.privacy.accountant import noise_for_target
from residency.common.refusal import RefusalCode
from residency.common.updates import prototypes
from residency.common.updates.prototypes import COUNTS, SENSITIVITY, SUMS

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


@pytest.mark.unit
def test_a_release_is_one_charged_step_and_sends_only_the_class_statistics(
    tmp_path: Path,
) -> None:
    job = one_round_job(tmp_path)
    settings = node_file(tmp_path, 20.0, public_records=70)
    reply = train_round(job, settings, run_id=1, server_round=1)
    assert not reply.has_error()
    arrays = update_of(reply)
    assert set(arrays) == {SUMS, COUNTS}
    assert arrays[SUMS].shape == (3, 32)
    assert arrays[COUNTS].shape == (3,)
    # Noisy, but the counts still say about how many notes there were (20 per class).
    assert np.abs(arrays[COUNTS] - EXAMPLES / 3).max() < 15
    record = signed_record(reply)
    # The record tells the operator's public size, never the count of 60.
    assert (record.sample_rate, record.steps, record.examples) == (1.0, 1, 70)
    assert record.max_grad_norm == SENSITIVITY  # the noise's scale: z times the sensitivity
    expected = noise_for_target(
        target_epsilon=8.0, delta=1e-4, sample_rate=1.0, steps=1, kind=AccountantKind.PRV
    )
    assert record.noise_multiplier == expected
    assert record.history == [(expected, 1.0, 1)]
    assert 7.9 < record.epsilon <= 8.0
    [charge] = BudgetStore(tmp_path / "state" / STORE_FILE).charges()
    assert charge.step == (expected, 1.0, 1)


@pytest.mark.unit
def test_a_second_release_in_the_same_run_is_refused_before_any_charge(tmp_path: Path) -> None:
    """A coordinator that asks again for what the job calibrated as one release."""
    job = one_round_job(tmp_path)
    settings = node_file(tmp_path, 100.0)
    train_round(job, settings, run_id=1, server_round=1)
    with pytest.raises(PolicyViolation) as refused:  # a release is once per job
        train_round(job, settings, run_id=1, server_round=2)
    assert refused.value.refusal.code is RefusalCode.INVALID_PLAN
    assert len(BudgetStore(tmp_path / "state" / STORE_FILE).charges()) == 1


@pytest.mark.unit
def test_a_release_whose_template_could_not_leave_is_refused_before_any_charge(
    tmp_path: Path,
) -> None:
    """A coordinator sending other shapes than the release's would waste a charged round."""
    job = one_round_job(tmp_path)
    settings = node_file(tmp_path, 100.0)
    wrong = {
        prototypes.SUMS: np.zeros((3, 8), np.float32),
        prototypes.COUNTS: np.zeros(3, np.float32),
    }
    with pytest.raises(ValueError, match=r"prototypes\.sums"):
        train_round(job, settings, run_id=1, server_round=1, arrays=wrong)
    assert BudgetStore(tmp_path / "state" / STORE_FILE).charges() == []
