"""Evidence that DP ran, signed every round (issue 24.7).

Opacus' hooks have stopped registering on PEFT's LoRA layers silently before (opacus issue
820). Before anything leaves, the node checks that every trainable tensor had a per-example
gradient (or norm) for every row of every batch, that the clipped sums stayed within the
clipping bound, that every step added noise of std ``z x C``; it signs these checks into the
record, a failed check sends nothing (the charge stands), and ``audit verify`` shows them.
Whole rounds through the node are in ``tests/node/test_mechanism_checks_rounds.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ledger_factory import write_ledger
from residency.auditor.verify import load_keys, verify_ledger
from residency.cli.audit import verify
from residency.client.mechanism_check import checked
from residency.common.errors import ConfigError
from residency.common.privacy.mechanism_log import MechanismLog
from residency.common.privacy.record import MechanismChecks

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


def _log(*, steps: int = 3, batches: int = 2, clipped: int = 2, std: float = 1.5) -> MechanismLog:
    log = MechanismLog(steps=steps, batches=batches, clipped_batches=clipped)
    log.noise_stds.add(std)
    return log


@pytest.mark.unit
def test_only_a_mechanism_that_ran_as_charged_is_signed() -> None:
    signed = checked(_log(), steps=3, noise_multiplier=1.5, max_grad_norm=1.0)
    assert signed == MechanismChecks(steps=3, batches=2, clipped_batches=2, noise_std=1.5)
    for log, reason in (
        (_log(steps=2), "2 noisy steps, 3 charged"),
        (_log(clipped=1), "1 of 2 batches"),
        (_log(std=0.75), "noise std"),
        (MechanismLog(steps=3, batches=0, clipped_batches=0), "noise std"),
        (MechanismLog(steps=0), "0 noisy steps"),
    ):
        with pytest.raises(ConfigError, match=reason) as failed:
            checked(log, steps=3, noise_multiplier=1.5, max_grad_norm=1.0)
        assert "nothing was sent" in str(failed.value)
    missing = _log()
    missing.unnoised_tensors = 1
    with pytest.raises(ConfigError, match="without a noisy gradient"):
        checked(missing, steps=3, noise_multiplier=1.5, max_grad_norm=1.0)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("mechanism", "problem"),
    [
        (None, "DE round 1: the record signs no check that DP ran"),
        (
            MechanismChecks(steps=39, batches=40, clipped_batches=40, noise_std=1.1),
            "DE round 1: 39 noisy steps checked, 40 recorded",
        ),
        (
            MechanismChecks(steps=40, batches=40, clipped_batches=38, noise_std=1.1),
            "DE round 1: 2 of 40 batches not checked as clipped",
        ),
        (
            MechanismChecks(steps=40, batches=40, clipped_batches=40, noise_std=0.55),
            "DE round 1: noise std 0.55 checked, the record's noise_multiplier x max_grad_norm "
            "is 1.1",
        ),
    ],
)
def test_audit_verify_flags_a_record_whose_mechanism_checks_are_missing_or_failed(
    tmp_path: Path, mechanism: MechanismChecks | None, problem: str
) -> None:
    made = write_ledger(tmp_path, countries=("DE",), rounds=1, refuse=None, mechanism=mechanism)
    result = verify_ledger(made.ledger, load_keys(made.keys))
    assert [p.what for p in result.problems] == [problem]


@pytest.mark.unit
def test_audit_verify_shows_each_records_mechanism_checks(tmp_path: Path) -> None:
    made = write_ledger(tmp_path, countries=("DE", "FR"), rounds=2, refuse=("FR", 2))
    app = typer.Typer()
    app.command()(verify)
    runner = CliRunner()

    shown = runner.invoke(app, [str(made.ledger), "--keys", str(made.keys), "--json"])
    table = runner.invoke(app, [str(made.ledger), "--keys", str(made.keys)], env={"COLUMNS": "200"})

    assert shown.exit_code == 0, shown.output
    records = json.loads(shown.stdout)["records"]
    assert [r["mechanism"] for r in records] == [
        {"steps": 40, "batches": 40, "clipped_batches": 40, "noise_std": pytest.approx(1.1)}
    ] * 3
    assert table.exit_code == 0, table.output
    assert "DP checks" in table.stdout
    assert "2/2" in table.stdout
    assert "1/1" in table.stdout
