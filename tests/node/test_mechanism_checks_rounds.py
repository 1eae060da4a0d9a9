"""Evidence that DP ran, signed every round (issue 24.7): whole rounds through the node.

Every kind of round signs the checks of its mechanism into its record, and a round whose
clipping did not run sends nothing while its charge stands, through the node's ClientApp
(seconds each). The checks themselves and ``audit verify``'s view of them are in
``tests/unit/test_mechanism_checks.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opacus.optimizers import DPOptimizer

from node_harness import node_file, signed_record, train_round
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.common.config.job import load_job
from residency.common.errors import ConfigError
from residency.common.privacy.ledger import LEDGER_FILE
from residency.common.updates import prototypes
from toy_federation import write_toy_job

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


@pytest.mark.node
@pytest.mark.parametrize(
    "train", ['update = "head"', 'update = "lora"', 'update = "head"\nwarm_start = "prototypes"']
)
def test_every_round_signs_the_checks_of_its_mechanism(tmp_path: Path, train: str) -> None:
    job = load_job(
        write_toy_job(tmp_path / "job", countries=("DE",), examples=40, rounds=1, train=train)
    )
    record = signed_record(train_round(job, node_file(tmp_path, 20.0), run_id=1, server_round=1))

    checks = record.mechanism
    assert checks is not None
    assert checks.steps == record.steps
    assert checks.clipped_batches == checks.batches > 0
    assert checks.noise_std == record.noise_multiplier * record.max_grad_norm
    if job.train.warm_start is not None:  # round 1 is the release
        assert (checks.steps, checks.batches, record.max_grad_norm) == (
            1,
            1,
            prototypes.SENSITIVITY,
        )


@pytest.mark.node
def test_a_round_whose_clipping_did_not_run_sends_nothing_and_its_charge_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library that stops clipping (here: Opacus sums the raw per-example gradients)."""

    def unclipped(self: DPOptimizer) -> None:
        for param in self.params:
            param.summed_grad = self._get_flat_grad_sample(param).sum(dim=0)

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", unclipped)
    job = load_job(
        write_toy_job(
            tmp_path / "job", countries=("DE",), examples=40, rounds=1, train='update = "head"'
        )
    )
    settings = node_file(tmp_path, 20.0)
    with pytest.raises(ConfigError, match="failed its own check") as failed:
        train_round(job, settings, run_id=1, server_round=1, overrides={"max-grad-norm": 1e-4})
    assert "over the clipping bound" in str(failed.value)
    assert len(BudgetStore(tmp_path / "state" / STORE_FILE).charges()) == 1
    kinds = [
        json.loads(line)["kind"]
        for line in (tmp_path / "state" / LEDGER_FILE).read_text().splitlines()
    ]
    assert "charge" in kinds
    assert "record" not in kinds
