"""Several jobs on one coordinator: a limit on how many run at once, and a queue beyond it.

A real SuperLink and two SuperNodes over TLS, started through the ``residency`` CLI; the
coordinator's ``coordinator.toml`` allows one job at a time. Three jobs are launched as
launchers would: the first runs, the second waits and runs when the first ends, the third is
stopped while it waits and never starts.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

import pytest

from deployment_harness import Federation, cli, wait_until
from residency.server.dashboard.state import read_state
from residency.server.results import Results, RunStatus
from toy_federation import write_toy_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNTRIES = ("DE", "FR")


def _runs(federation: Federation) -> dict[str, dict[str, object]]:
    done = cli("runs", "--json", "--coordinator", federation.address, "--ca", str(federation.ca))
    assert done.returncode == 0, done.stdout + done.stderr
    return {str(item["run-id"]): item for item in json.loads(done.stdout)}


def _results(federation: Federation, run: str) -> Results:
    path = federation.coordinator_dir / "runs" / run / "results.json"
    return Results.model_validate_json(path.read_text("utf-8"))


def _status(federation: Federation, run: str) -> str:
    try:
        return _results(federation, run).status.value
    except (OSError, ValueError):
        return ""


@dataclass
class Queue:
    federation: Federation
    first: str
    second: str
    third: str
    listed_while_waiting: dict[str, dict[str, object]]
    dashboard_statuses: dict[str, str]
    stopped: subprocess.CompletedProcess[str]
    second_said: str
    third_said: str


def _run_id(federation: Federation, known: set[str]) -> str:
    found: list[str] = []

    def launched() -> bool:
        found[:] = sorted(set(_runs(federation)) - known)
        return bool(found)

    wait_until(launched, timeout_s=120, what="the launch to become a run")
    return found[0]


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> Queue:
    root = tmp_path_factory.mktemp("queue")
    data = write_toy_job(root / "data", countries=COUNTRIES).parent
    federation = Federation(root / "fed")
    federation.init_coordinator("127.0.0.1")
    settings = federation.coordinator_dir / "coordinator.toml"
    written = settings.read_text("utf-8")
    assert "max_concurrent_runs = 2\n" in written  # the default, as `coordinator init` wrote it
    one_at_a_time = written.replace("max_concurrent_runs = 2\n", "max_concurrent_runs = 1\n")
    settings.write_text(one_at_a_time, "utf-8")
    launchers = []
    try:
        federation.start_coordinator()
        for country in COUNTRIES:
            node = federation.init_node(country, data / f"{country.lower()}.csv", budget=100.0)
            federation.admit(node, country)
            federation.start_node(node)
        federation.wait_online(COUNTRIES)
        tracked = '\n[tracking]\nexperiment = "queued"\n'  # the coordinator's store
        jobs = [
            write_toy_job(
                root / name,
                countries=COUNTRIES,
                rounds=rounds,
                train='update = "head"',
                privacy=tracked if name == "second" else "",
            )
            for name, rounds in (("first", 3), ("second", 1), ("third", 1))
        ]
        known = set(_runs(federation))
        launchers.append(federation.launch(jobs[0], root / "first-out"))
        first = _run_id(federation, known)
        wait_until(lambda: _status(federation, first) == "running", timeout_s=120, what="job 1")
        launchers.append(federation.launch(jobs[1], root / "second-out"))
        second = _run_id(federation, known | {first})
        launchers.append(federation.launch(jobs[2], root / "third-out"))
        third = _run_id(federation, known | {first, second})
        listed = _runs(federation)
        dashboard = {
            run.id: run.status.value for run in read_state(federation.coordinator_dir).runs
        }
        stopped = cli(
            "runs",
            "stop",
            third,
            "--coordinator",
            federation.address,
            "--ca",
            str(federation.ca),
        )
        said = [launcher.communicate(timeout=400)[0] for launcher in launchers]
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
        federation.stop_all()
    return Queue(federation, first, second, third, listed, dashboard, stopped, said[1], said[2])


def test_a_launch_beyond_the_limit_waits_in_the_queue_and_runs_when_a_slot_frees(
    queue: Queue,
) -> None:
    listed = queue.listed_while_waiting
    assert listed[queue.first]["status"] == "running"
    assert listed[queue.second]["status"] == "pending"
    assert (listed[queue.second]["queue-position"], listed[queue.third]["queue-position"]) == (1, 2)
    assert f"run {queue.second} is queued (#1)" in queue.second_said
    first = _results(queue.federation, queue.first)
    second = _results(queue.federation, queue.second)
    assert (first.status, second.status) == (RunStatus.COMPLETED, RunStatus.COMPLETED)
    assert first.finished_at is not None
    assert second.started_at >= first.finished_at  # one job at a time, as coordinator.toml says


def test_every_job_is_on_the_dashboard_the_waiting_ones_as_queued(queue: Queue) -> None:
    statuses = queue.dashboard_statuses
    assert statuses[queue.first] == "running"
    assert statuses[queue.second] == statuses[queue.third] == "queued"


def test_a_queued_job_stopped_never_starts_and_nobody_spends_on_it(queue: Queue) -> None:
    assert queue.stopped.returncode == 0, queue.stopped.stdout + queue.stopped.stderr
    third = _results(queue.federation, queue.third)
    assert third.status is RunStatus.STOPPED
    assert third.error == "stopped while queued (runs stop); it never started and spent nothing"
    assert third.rounds == []
    for country in COUNTRIES:
        ledger = queue.federation.root / f"node-{country}" / "state" / "ledger.jsonl"
        runs = {json.loads(line).get("run") for line in ledger.read_text("ascii").splitlines()}
        assert queue.third not in runs
        assert {queue.first, queue.second} <= runs
    coordinator_ledger = queue.federation.coordinator_dir / "ledger" / "ledger.jsonl"
    entries = [json.loads(line) for line in coordinator_ledger.read_text("ascii").splitlines()]
    assert queue.third not in {entry.get("run") for entry in entries}


def test_a_tracked_job_is_logged_where_the_coordinators_operator_says(queue: Queue) -> None:
    from mlflow.tracking import MlflowClient

    store = queue.federation.coordinator_dir / "tracking" / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("queued")
    assert experiment is not None
    [tracked] = client.search_runs([experiment.experiment_id])
    assert tracked.data.tags["residency.run"] == queue.second
    assert tracked.info.status == "FINISHED"
    second = _results(queue.federation, queue.second)
    for country in COUNTRIES:
        assert tracked.data.metrics[f"epsilon/{country}"] == second.privacy[country].epsilon
