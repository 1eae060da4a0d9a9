"""A federation where one country's operator chose person-level DP, seen by every party.

``residency simulate`` on Flower's simulation engine: DE's node protects people (each with
several records, at most 3 read), FR's protects records. The launcher's progress lines, the
coordinator's ``results.json``, the auditor's ``audit verify`` and report, and the dashboard
each say what every country's epsilon is per, and the ledger verifies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from differential import write_rows
from residency.server.dashboard.state import read_state
from residency.server.results import Results
from toy_federation import separable_rows, write_toy_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAP = 3


def _job(root: Path) -> Path:
    job = write_toy_job(
        root / "job",
        countries=("DE", "FR"),
        examples=120,
        rounds=2,
        train='update = "head"\nwarm_start = "prototypes"',
    )
    rows = [(t, label, f"de-{i % 30}") for i, (t, label) in enumerate(separable_rows(120, 0))]
    write_rows(root / "job" / "de.csv", rows)  # 30 people, 4 records each
    text = job.read_text("utf-8").replace(
        'data = "de.csv"\n',
        f'data = "de.csv"\nprivacy_unit = "person"\nperson_column = "person"\n'
        f"records_per_person = {CAP}\n",
    )
    job.write_text(text, encoding="utf-8")
    return job


def _residency(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "residency"), *args]
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def test_every_party_sees_which_country_protects_people(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _residency("simulate", str(_job(tmp_path)), "--output", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DE ε=" in done.stdout
    assert "per person" in done.stdout.split("DE ε=")[1].split("FR")[0]  # the launcher's line

    results = Results.model_validate_json((out / "results.json").read_text("utf-8"))
    assert results.privacy["DE"].privacy_unit == "person"
    assert results.privacy["DE"].records_per_person == CAP
    assert results.privacy["FR"].privacy_unit == "record"
    assert {n.privacy_unit for r in results.rounds for n in r.nodes if n.country == "DE"} == {
        "person"
    }
    assert results.privacy["DE"].epsilon is not None
    assert results.privacy["DE"].epsilon <= results.privacy["DE"].target_epsilon * (1 + 1e-6)

    ledger, keys = out / "ledger" / "ledger.jsonl", out / "keys"
    verified = _residency(
        "audit", "verify", str(ledger), "--keys", str(keys), "--json", cwd=tmp_path
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    records = json.loads(verified.stdout)["records"]
    assert {(r["country"], r["privacy_unit"], r["records_per_person"]) for r in records} == {
        ("DE", "person", CAP),
        ("FR", "record", None),
    }
    report = _residency(
        "audit", "report", str(ledger), "--keys", str(keys), "--format", "md", cwd=tmp_path
    )
    assert report.returncode == 0, report.stderr
    assert f"Run ε per person (at most {CAP} records each)" in report.stdout
    assert "Run ε per record" in report.stdout

    entries = [json.loads(line) for line in ledger.read_text("ascii").splitlines()]
    de = max(i for i, e in enumerate(entries) if e["kind"] == "record" and e["country"] == "DE")
    canary = _residency(
        "audit",
        "canary",
        "--ledger",
        str(ledger),
        "--entry",
        str(de),
        "--canaries",
        "400",
        "--json",
        cwd=tmp_path,
    )
    assert canary.returncode == 0, canary.stdout + canary.stderr
    audits = json.loads(canary.stdout)
    assert {a["mechanism"]["records_per_person"] for a in audits} == {CAP}  # canary people
    assert not any(a["flagged"] for a in audits)

    [run] = read_state(out).runs
    units = {view.country: view.privacy_unit for view in run.countries}
    assert units == {"DE": "person", "FR": "record"}
