"""A node reached by a hostile coordinator runs nothing no trusted launcher signed, as signed.

The coordinator here is Flower's own SuperLink running ``hostile_coordinator_app``: it sends a
real Residency node (started through ``residency node start``, over TLS with its admitted key)
well-formed round plans that are unsigned, signed by the coordinator's own key, edited after
signing, or relayed with another target. Each must be refused before any charge.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import hostile_coordinator_app
import pytest

from deployment_harness import Federation, wait_until
from residency.cli.bundle import write_app_bundle
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.common import wire
from residency.common.config.job import load_job
from residency.common.config.signed_job import job_body
from residency.common.refusal import RefusalCode, decode
from toy_federation import write_toy_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASES = (
    "unsigned",
    "coordinator's own key",
    "edited after signing",
    "relayed with another target",
)


@dataclass
class Reached:
    flwr_run: subprocess.CompletedProcess[str]
    report: dict[str, list[dict[str, Any]]]
    charges: int
    refusals: list[dict[str, Any]]


@pytest.fixture(scope="module")
def reached(tmp_path_factory: pytest.TempPathFactory) -> Reached:
    root = tmp_path_factory.mktemp("hostile")
    job = load_job(write_toy_job(root / "job", countries=("DE",), rounds=1), remote=True)
    bundle, report = root / "bundle", root / "report.json"
    bundle.mkdir()
    shutil.copy(hostile_coordinator_app.__file__, bundle / "hostile_coordinator_app.py")
    federation = Federation(root / "fed")
    federation.init_coordinator("127.0.0.1")
    write_app_bundle(
        bundle,
        name="hostile-coordinator",
        version="1.0.0",
        description="not Residency",
        serverapp="hostile_coordinator_app:app",
        clientapp="hostile_coordinator_app:app",
        config={
            hostile_coordinator_app.JOB_KEY: job_body(job),
            hostile_coordinator_app.LAUNCHER_KEY_FILE: str(federation.launcher_key),
            hostile_coordinator_app.REPORT_KEY: str(report),
        },
    )
    try:
        federation.start_flower_superlink()
        node = federation.init_node("DE", root / "job" / "de.csv", budget=100.0)
        federation.admit(node, "DE")
        federation.start_node(node)
        federation.wait_online(["DE"])
        done = federation.flwr_run(bundle, timeout_s=600)
    finally:
        federation.stop_all()
    wait_until(lambda: not federation.leftovers(), timeout_s=30, what="no leftover processes")
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    ledger = [
        json.loads(line) for line in (node / "state" / "ledger.jsonl").read_text().splitlines()
    ]
    return Reached(
        done,
        json.loads(report.read_text("utf-8")),
        len(BudgetStore(node / "state" / STORE_FILE).charges()),
        [entry for entry in ledger if entry["kind"] == "refusal"],
    )


def test_every_plan_no_trusted_launcher_signed_is_refused(reached: Reached) -> None:
    assert sorted(reached.report) == sorted(CASES)
    for case in CASES:
        [reply] = reached.report[case]
        assert reply["error"] == wire.REFUSED, (case, reply)
        assert decode(reply["reason"]).code is RefusalCode.UNTRUSTED_JOB, (case, reply)


def test_nothing_was_charged_and_every_refusal_is_in_the_nodes_ledger(reached: Reached) -> None:
    assert reached.charges == 0
    assert len(reached.refusals) == len(CASES)
    reasons = " | ".join(entry["reason"] for entry in reached.refusals)
    assert "job: not signed" in reasons
    assert "which node.toml does not trust" in reasons
    assert "does not match the job" in reasons
    assert "differs from the job its launcher signed (target-epsilon)" in reasons
