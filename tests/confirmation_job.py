"""The job the confirmation tests confirm and hold, and the node's budget store that holds it.

Confirming and holding a job on its own is checked in the unit tier
(``tests/unit/test_job_confirmation.py``), whole rounds against a hold in the node tier
(``tests/node/test_job_confirmation_rounds.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.common.config.job import Job, load_job
from toy_federation import write_toy_job


@pytest.fixture(name="job")
def two_round_job(tmp_path: Path) -> Job:
    """A DE-only job of two rounds over 60 records: the test module imports it as ``job``."""
    return load_job(write_toy_job(tmp_path / "job", countries=("DE",), examples=60, rounds=2))


def node_store(tmp_path: Path) -> BudgetStore:
    """The budget store of the node that ``node_file(tmp_path, ...)`` writes."""
    return BudgetStore(tmp_path / "state" / STORE_FILE)
