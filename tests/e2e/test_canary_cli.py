"""``canary`` as a command: exit 3 when the noise is off, 0 when correct, 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ledger_factory import write_ledger
from residency.cli.canary import canary
from residency.common.config.kinds import AccountantKind
from residency.common.privacy.accountant import epsilon_spent

pytestmark = [pytest.mark.e2e]

ROUND = ["--sample-rate", "0.04", "--steps", "250", "--canaries", "4000"]


def invoke(*args: str) -> tuple[int, str, str]:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(canary)
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_noise_off_claiming_a_budget_exits_3() -> None:
    code, out, err = invoke("--noise-multiplier", "0", *ROUND, "--claimed-epsilon", "4.2")
    assert code == 3, out + err
    assert "FLAGGED: ε ≥ " in out
    assert "claimed ε=4.200" in out
    assert "one-run canary audit" in out


def test_correct_configuration_exits_0_and_json_is_the_result() -> None:
    code, out, err = invoke("--noise-multiplier", "1.0", *ROUND, "--json", "--seed", "3")
    assert code == 0, out + err
    result = json.loads(out)
    assert result["flagged"] is False
    assert result["epsilon_lower_bound"] < result["claimed_epsilon"]
    assert result["mechanism"]["noise_multiplier"] == 1.0
    assert result["canaries"] == 4000
    assert result["confidence"] == 0.95
    assert result["seed"] == 3


def test_flagged_json_still_exits_3() -> None:
    code, out, _ = invoke("--noise-multiplier", "0", *ROUND, "--claimed-epsilon", "2", "--json")
    assert code == 3
    assert json.loads(out)["flagged"] is True


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--noise-multiplier", "-1", *ROUND], "--noise-multiplier"),
        (["--noise-multiplier", "1", "--sample-rate", "0", "--steps", "10"], "--sample-rate"),
        (["--noise-multiplier", "1", "--sample-rate", "1.5", "--steps", "10"], "--sample-rate"),
        (["--noise-multiplier", "1", "--sample-rate", "0.03", "--steps", "10"], "--sample-rate"),
        (["--noise-multiplier", "1", *ROUND, "--confidence", "1"], "--confidence"),
        (["--noise-multiplier", "1", *ROUND, "--confidence", "0"], "--confidence"),
        (
            [
                "--noise-multiplier",
                "1",
                "--sample-rate",
                "0.04",
                "--steps",
                "9",
                "--canaries",
                "99",
            ],
            "--canaries",
        ),
        (["--noise-multiplier", "1", "--sample-rate", "0.0001", "--steps", "9"], "--canaries"),
        (["--noise-multiplier", "0", *ROUND], "--claimed-epsilon"),
        (["--noise-multiplier", "1", *ROUND, "--claimed-epsilon", "-2"], "--claimed-epsilon"),
        (["--noise-multiplier", "1", *ROUND, "--delta", "1"], "--delta"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], flag: str) -> None:
    code, out, err = invoke(*args)
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {flag}: "), lines[0]
    assert "; fix: " in lines[0]
    assert out == ""


def test_a_nodes_recorded_configuration_is_audited_from_the_ledger(tmp_path: Path) -> None:
    made = write_ledger(tmp_path, countries=("DE",), rounds=2, refuse=None)
    lines = made.ledger.read_text("ascii").splitlines()
    entry = max(i for i, line in enumerate(lines) if '"kind":"record"' in line)
    record = json.loads(json.loads(lines[entry])["record"]["body"])

    code, out, err = invoke(
        "--ledger", str(made.ledger), "--entry", str(entry), "--canaries", "4000", "--json"
    )

    assert code == 0, out + err
    result = json.loads(out)
    assert result["claimed_epsilon"] == record["epsilon"]
    assert result["mechanism"]["noise_multiplier"] == record["noise_multiplier"]
    assert result["mechanism"]["steps"] == sum(n for _, _, n in record["history"])
    assert result["flagged"] is False


def test_a_ledger_entry_that_is_not_a_record_is_one_line_exit_2(tmp_path: Path) -> None:
    made = write_ledger(tmp_path, countries=("DE",), rounds=1, refuse=None)

    code, _, err = invoke("--ledger", str(made.ledger), "--entry", "0")

    assert code == 2
    assert err.strip() == "error: --entry: 0 is a run-started entry; fix: pick a record entry"


def test_each_mechanism_of_a_default_jobs_record_is_audited_against_its_own_epsilon(
    tmp_path: Path,
) -> None:
    """Issue 26, point 7: a release then training rounds, as the default pipeline signs it."""
    release, training = (3.0, 1.0, 1), (1.2, 0.04, 25)
    made = write_ledger(
        tmp_path, countries=("DE",), rounds=3, refuse=None, schedule=[release, training, training]
    )
    lines = made.ledger.read_text("ascii").splitlines()
    entry = max(i for i, line in enumerate(lines) if '"kind":"record"' in line)
    record = json.loads(json.loads(lines[entry])["record"]["body"])
    assert len({(z, q) for z, q, _ in record["history"]}) == 2

    code, out, err = invoke(
        "--ledger", str(made.ledger), "--entry", str(entry), "--canaries", "4000", "--json"
    )

    assert code == 0, out + err
    first, second = json.loads(out)
    assert (first["mechanism"]["sample_rate"], first["mechanism"]["steps"]) == (1.0, 1)
    assert (second["mechanism"]["sample_rate"], second["mechanism"]["steps"]) == (0.04, 50)
    for audit, (z, q, n) in ((first, release), (second, (1.2, 0.04, 50))):
        alone = epsilon_spent(((z, q, n),), delta=record["delta"], kind=AccountantKind.PRV)
        assert audit["claimed_epsilon"] == pytest.approx(alone)
        assert audit["flagged"] is False
    assert first["claimed_epsilon"] + second["claimed_epsilon"] > record["epsilon"]  # composed

    code, out, _ = invoke("--ledger", str(made.ledger), "--entry", str(entry), "--canaries", "4000")
    assert code == 0
    assert f"mechanism 1 of 2 in entry {entry}:" in out
    assert f"mechanism 2 of 2 in entry {entry}:" in out
