"""``residency audit verify`` as an auditor runs it: exit codes, entry numbers, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ledger_factory import RESET_REASON, account, write_ledger

pytestmark = pytest.mark.e2e

RESIDENCY = shutil.which("residency") or str(Path(sys.executable).parent / "residency")


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [RESIDENCY, "audit", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_verify_passes_a_clean_ledger_and_prints_its_head(tmp_path: Path) -> None:
    made = write_ledger(tmp_path)
    nodes = [arg for path in made.node_ledgers.values() for arg in ("--node-ledger", str(path))]

    done = audit("verify", str(made.ledger), "--keys", str(made.keys), *nodes)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "VERIFIED: 8 entries" in done.stdout
    head = next(line for line in done.stdout.splitlines() if line.startswith("head "))
    again = audit("verify", str(made.ledger), "--keys", str(made.keys), "--since", head[5:])
    assert again.returncode == 0, again.stderr


def test_verify_names_the_edited_entry_and_exits_3(tmp_path: Path) -> None:
    made = write_ledger(tmp_path)
    lines = made.ledger.read_text("ascii").splitlines()
    lines[4] = lines[4].replace('"averaged":true', '"averaged":false')
    made.ledger.write_text("\n".join(lines) + "\n", "ascii")

    done = audit("verify", str(made.ledger), "--keys", str(made.keys))
    as_json = audit("verify", str(made.ledger), "--keys", str(made.keys), "--json")

    assert done.returncode == 3
    assert "problem entry 4: content does not match its hash" in done.stderr
    assert "FAILED: 1 problem(s)" in done.stderr
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["problems"] == [
        {"entry": 4, "problem": "content does not match its hash: the entry was edited"}
    ]


def test_verify_prints_budget_resets_without_failing(tmp_path: Path) -> None:
    made = write_ledger(tmp_path, rounds=1, refuse=None, reset="FR")
    node = str(made.node_ledgers["FR"])

    done = audit("verify", str(made.ledger), "--keys", str(made.keys), "--node-ledger", node)
    as_json = audit(
        "verify", str(made.ledger), "--keys", str(made.keys), "--node-ledger", node, "--json"
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        f"budget reset {node} entry 0: FR opened a new account for dataset 'fr-notes' at "
    ) in done.stdout
    assert f"(account {account('FR')[:12]} -> {account('FR', 2)[:12]}); reason: " in done.stdout
    assert repr(RESET_REASON) in done.stdout
    assert as_json.returncode == 0, as_json.stderr
    [reset] = json.loads(as_json.stdout)["resets"]
    assert {k: v for k, v in reset.items() if k != "at"} == {
        "ledger": node,
        "entry": 0,
        "country": "FR",
        "dataset": "fr-notes",
        "old_account": account("FR"),
        "new_account": account("FR", 2),
        "reason": RESET_REASON,
    }


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nowhere.jsonl", "--keys", "{keys}"], "ledger not found"),
        (["{ledger}", "--keys", "{missing}"], "--keys: "),
        (["{ledger}", "--keys", "{ledger_dir}"], "no .pub files"),
        (["{ledger}", "--keys", "{keys}", "--since", "3:abc"], "--since: '3:abc'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    made = write_ledger(tmp_path, rounds=1, refuse=None)
    values = {
        "keys": str(made.keys),
        "missing": str(tmp_path / "missing"),
        "ledger": str(made.ledger),
        "ledger_dir": str(made.ledger.parent),
    }

    done = audit("verify", *[arg.format(**values) for arg in args])

    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
