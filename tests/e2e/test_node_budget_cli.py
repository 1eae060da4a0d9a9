"""``residency node budget reset``: a new account only by the operator's signed, audited act."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from e2e_cli import error_line, residency
from toy_federation import separable_rows, write_rows

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def init_node(tmp_path: Path) -> None:
    """``node init node-de`` in ``tmp_path``, on 30 records of its own."""
    data = write_rows(tmp_path / "de.csv", separable_rows(30, 0))
    made = residency(
        "node", "init", "node-de", "--country", "DE", "--data", str(data),
        "--labels", "pos,neg,obj", "--budget-epsilon", "8", "--delta", "1e-5", cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr


def test_a_reset_is_signed_into_the_node_ledger_and_verifies(tmp_path: Path) -> None:
    init_node(tmp_path)

    empty = residency("node", "budget", "reset", "node-de", "--reason", " ", cwd=tmp_path)
    assert empty.returncode == 2
    assert "--reason: empty; fix:" in error_line(empty)
    assert not (tmp_path / "node-de" / "state" / "ledger.jsonl").exists()  # nothing written

    done = residency(
        "node", "budget", "reset", "node-de", "--reason", "new consent cohort", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "new budget account" in done.stdout
    ledger = tmp_path / "node-de" / "state" / "ledger.jsonl"
    [entry] = [json.loads(line) for line in ledger.read_text("ascii").splitlines()]
    assert entry["kind"] == "budget-reset"
    assert entry["reason"] == "new consent cohort"
    assert entry["detail"]["dataset"] == "de.csv"
    assert entry["detail"]["old_account"] != entry["detail"]["new_account"]

    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(tmp_path / "node-de" / "keys" / "record.key.pub", keys / "DE.pub")
    verified = residency("audit", "verify", str(ledger), "--keys", str(keys), cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "new consent cohort" in verified.stdout


def test_a_corrupt_budget_store_is_named_in_one_line_and_left_as_it_was(tmp_path: Path) -> None:
    init_node(tmp_path)
    store = tmp_path / "node-de" / "state" / "budget.sqlite"
    store.parent.mkdir(exist_ok=True)
    store.write_bytes(b"not a database, whatever happened to it " * 100)

    for command in (("status", "node-de"), ("budget", "reset", "node-de", "--reason", "x")):
        said = residency("node", *command, cwd=tmp_path)
        assert said.returncode == 2, said.stdout + said.stderr
        line = error_line(said)
        assert f"{store}: the node's budget store cannot be opened (file is not a database)" in line
        assert "fix: restore the node's state folder from its backup" in line
        assert "Traceback" not in said.stderr
    assert store.read_bytes() == b"not a database, whatever happened to it " * 100
    assert not (tmp_path / "node-de" / "state" / "ledger.jsonl").exists()
