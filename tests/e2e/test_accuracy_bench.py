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
    """One epsilon: each regime is a simulation (about 30 s); more epsilons add nothing here."""
    out = tmp_path / "accuracy.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--model", "tiny", "--countries", "DE,FR",
         "--examples", "40", "--test", "30", "--epsilons", "8", "--repeats", "1",
         "--alpha", "0.3", "--json", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    references = {row["regime"] for row in rows if row["update"] is None}
    assert references == {
        "class means (no DP)",
        "linear probe fed. (no DP)",
        "linear probe central (no DP)",
        "majority class",
    }
    assert all(row["epsilon"] is None for row in rows if row["update"] is None)
    seen = {(row["regime"], row["epsilon"]) for row in rows if row["update"] == "prototypes+head"}
    for regime in ("federated", "central", "local-only DE", "local-only FR"):
        assert (regime, 8.0) in seen, regime
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0
        if row["update"] is not None:  # the product's own run: its nodes spent the target
            assert len(row["runs"]) == len(row["spent"]) == 1
            assert all(row["epsilon"] * 0.95 <= s <= row["epsilon"] for s in row["spent"])
    # Label skew: the two countries do not share one label mix.
    lines = done.stdout.splitlines()
    mixes = [line.split("labels ")[1] for line in lines if line.strip().startswith(("DE:", "FR:"))]
    assert len(mixes) == 2
    assert mixes[0] != mixes[1]
    table = lines[lines.index(next(x for x in lines if x.startswith("regime "))) :]
    assert all(len(line) <= 80 for line in table)
    assert "targets for prototypes+head" in done.stdout
    assert "target <= 3: " in done.stdout  # epsilon 8's; each epsilon's: the unit tier
    assert "beats every country alone" in done.stdout


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
