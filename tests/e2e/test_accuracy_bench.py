"""``bench/accuracy.py`` end to end on the tiny model: every regime runs and spends its budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "accuracy.py"


def test_tiny_run_reports_every_regime_and_spends_at_most_the_target(tmp_path: Path) -> None:
    out = tmp_path / "accuracy.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--model", "tiny", "--countries", "DE,FR",
         "--examples", "40", "--test", "30", "--rounds", "2", "--epsilons", "3,8",
         "--batch-size", "16", "--alpha", "0.3", "--simulate", "--json", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    rows = report["rows"]
    seen = {(row["regime"], row["epsilon"]) for row in rows}
    for regime in ("federated", "central", "local-only DE", "local-only FR", "local-only (mean)"):
        assert {(regime, 3.0), (regime, 8.0), (regime, None)} <= seen, regime
    assert {("federated lora-fa", 8.0), ("federated float16", 8.0)} <= seen
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert len(row["curve"]) == 2  # scored after every round
        if row["regime"] == "local-only (mean)":
            continue
        parties = 2 if row["regime"].startswith("federated") else 1
        assert len(row["spent"]) == len(row["noise"]) == parties
        if row["epsilon"] is None:  # no DP: no noise, nothing to account
            assert row["noise"] == [0.0] * parties
            assert row["spent"] == [None] * parties
        else:  # each party's noise spends its whole target over the run, and no more
            assert all(z > 0 for z in row["noise"])
            assert all(row["epsilon"] * 0.95 <= s <= row["epsilon"] for s in row["spent"])
    # Label skew: the two countries do not share one label mix.
    lines = done.stdout.splitlines()
    mixes = [line.split("labels ")[1] for line in lines if line.strip().startswith(("DE:", "FR:"))]
    assert len(mixes) == 2
    assert mixes[0] != mixes[1]
    # The product itself, run on the same rows, lands where the in-process loop does.
    in_process = next(r for r in rows if r["regime"] == "federated" and r["epsilon"] == 8.0)
    assert abs(report["simulated_eps8"] - in_process["accuracy"]) <= 0.1
    assert "update lora, batch 16" in done.stdout  # the default update, named in the header
    assert "federated DP against non-private federated, same update" in done.stdout
    assert "target <= 3: " in done.stdout
    assert "target <= 5: " in done.stdout


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [("--countries", "DE,XX", "XX"), ("--examples", "0", "examples")],
)
def test_bad_data_arguments_give_one_usage_line(
    tmp_path: Path, flag: str, value: str, named: str
) -> None:
    out = tmp_path / "accuracy.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--model", "tiny", flag, value, "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("accuracy.py: error")]
    assert len(errors) == 1, done.stderr
    assert named in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()
