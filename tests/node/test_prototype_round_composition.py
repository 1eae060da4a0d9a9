"""A node's prototype releases and DP-SGD rounds compose in one dataset account.

Whole rounds through the ClientApp, seconds each; a single release is checked in
``tests/unit/test_prototype_round.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node_harness import charge_details, node_file, signed_record, train_round
from prototype_release import one_round_job
from residency.common.config.kinds import AccountantKind
from residency.common.privacy.accountant import epsilon_spent

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


@pytest.mark.node
def test_releases_and_dp_sgd_rounds_compose_in_one_dataset_account(tmp_path: Path) -> None:
    release = one_round_job(tmp_path)
    settings = node_file(tmp_path, 100.0)
    first = signed_record(train_round(release, settings, run_id=1, server_round=1))
    head = one_round_job(tmp_path, "head", name="head-job")
    second = signed_record(train_round(head, settings, run_id=2, server_round=1))
    assert second.dataset == first.dataset
    both = epsilon_spent((*first.history, *second.history), delta=1e-4, kind=AccountantKind.PRV)
    lifetime = charge_details(tmp_path / "state")[-1]["epsilon_dataset"]
    assert lifetime == pytest.approx(both, rel=1e-6)
    assert lifetime > max(first.epsilon, second.epsilon)
