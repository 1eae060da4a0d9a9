"""The auditor's second opinion on whole pipelines: honest ledgers pass at every target.

The ledgers are what honest nodes sign (``tests/honest_ledgers.py``); each verification audits
a pipeline's whole schedule, seconds each. The single release and the two libraries' intervals
are checked in ``tests/unit/test_audit_crosscheck.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from honest_ledgers import (
    CHEAT_TARGETS,
    PIPELINES,
    assert_an_understated_record_is_flagged,
    honest_schedule,
    verify_schedule,
)
from residency.common.config.kinds import AccountantKind

pytestmark = pytest.mark.filterwarnings(
    "ignore:Optimal order is the largest alpha:UserWarning"  # Opacus' RDP at small epsilon
)

TARGETS = (0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

# RDP cannot reach 0.1 in any pipeline (its largest order, 63, bounds epsilon below by
# log(1/delta)/62 = 0.19): a node refuses such a job before any charge.
HONEST = [
    (kind, pipeline, target)
    for kind in AccountantKind
    for pipeline in PIPELINES
    for target in TARGETS
    if kind is AccountantKind.PRV or target >= 0.5
]


@pytest.mark.node
@pytest.mark.parametrize(("kind", "pipeline", "target"), HONEST)
def test_an_honest_ledger_verifies_at_every_target_in_every_pipeline(
    tmp_path: Path, kind: AccountantKind, pipeline: str, target: float
) -> None:
    """An auditor must never be told an honest node cheated (small targets included)."""
    schedule = honest_schedule(pipeline, target, kind)
    result = verify_schedule(tmp_path, schedule, target, kind=kind)
    assert result.ok, [str(p) for p in result.problems]
    assert len(result.spends) == len(schedule)
    spent = result.spends[-1].epsilon_opacus
    assert target * 0.7 < spent <= target * 1.0001  # the node spent (most of) its target


@pytest.mark.node
@pytest.mark.parametrize(
    ("pipeline", "target"),
    [
        (pipeline, target)
        for pipeline in PIPELINES
        if pipeline != "prototypes"
        for target in CHEAT_TARGETS
    ],
)
def test_a_record_that_understates_its_epsilon_is_flagged_by_dp_accounting_alone(
    tmp_path: Path, pipeline: str, target: float
) -> None:
    """The longer schedules, seconds each; a release's record is checked in the unit tier."""
    assert_an_understated_record_is_flagged(tmp_path, pipeline, target)
