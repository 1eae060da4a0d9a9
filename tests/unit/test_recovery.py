"""A restarted coordinator settles the runs a crash left open, so the ledger verifies again.

Resuming needs the SuperLink database's run and its bundle: tests/integration/test_faults.py
resumes a real one; here the database is gone, so the run ends failed. A ServerApp of an
earlier start that still runs is waited for, and the start refuses to settle its run while
it lives.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from residency.auditor.verify import load_keys, verify_ledger
from residency.common.clock import now
from residency.common.config.job import load_job
from residency.common.privacy.signing import public_path
from residency.server import recovery
from residency.server.coordinator import CoordinatorDir, init_coordinator
from residency.server.recovery import UNCONFIRMED_REASON, _flower_run, _link_state, settle_open_runs
from residency.server.results import InFlight, Results, RoundResult, RunStatus
from residency.server.run_ledger import RunLedger
from residency.server.run_lock import RunDriven
from toy_federation import write_toy_job

pytestmark = pytest.mark.unit


def _crashed_run(folder: CoordinatorDir, run: str, *, in_flight: InFlight | None) -> Path:
    """What a coordinator killed mid-run leaves: results "running", a ledger with no end."""
    job = load_job(write_toy_job(folder.root / f"job-{run}", countries=("DE", "FR")))
    RunLedger.open(folder.ledger, folder.ledger_key, run=run, job=job.name).started(job)
    results = Results(
        job=job.name,
        residency_version="test",
        started_at=now(),
        config={},
        rounds=[
            RoundResult(
                round=1,
                accuracy=None,
                macro_f1=None,
                test_loss=None,
                nodes=[],
                bytes_up=0,
                bytes_down=0,
                seconds=1.0,
            )
        ],
        in_flight=in_flight,
    )
    path = folder.runs / run / "results.json"
    path.parent.mkdir(parents=True)
    results.write(path)
    return path


def _auditor_keys(folder: CoordinatorDir, tmp_path: Path) -> dict[str, str]:
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(public_path(folder.ledger_key), keys / "coordinator.pub")
    return load_keys(keys)


def test_an_open_run_ends_failed_with_its_in_flight_round_unconfirmed(tmp_path: Path) -> None:
    folder = init_coordinator(tmp_path / "coordinator", names=["127.0.0.1"])
    path = _crashed_run(folder, "41", in_flight=InFlight(round=2, countries=["DE", "FR"]))
    keys = _auditor_keys(folder, tmp_path)
    assert any(
        "no run-finished entry" in p.what
        for p in verify_ledger(folder.ledger / "ledger.jsonl", keys).problems
    )

    ended = settle_open_runs(folder, folder.load())

    assert [e.run for e in ended] == ["41"]
    results = Results.model_validate_json(path.read_text("utf-8"))
    assert results.status is RunStatus.FAILED
    assert results.error == (
        "the coordinator stopped during round 2; `residency coordinator start` ended the run "
        "(the SuperLink database is gone, so it cannot resume)"
    )
    assert results.finished_at is not None
    verified = verify_ledger(folder.ledger / "ledger.jsonl", keys)
    assert verified.problems == []
    assert verified.unconfirmed == {("41", "DE", 2), ("41", "FR", 2)}
    assert verified.runs["41"]["status"] == "failed"
    lines = (folder.ledger / "ledger.jsonl").read_text("ascii")
    assert UNCONFIRMED_REASON in lines
    assert (
        settle_open_runs(folder, folder.load()) == []
    )  # settled once; a second start changes nothing


def test_finished_runs_are_left_alone(tmp_path: Path) -> None:
    folder = init_coordinator(tmp_path / "coordinator", names=["127.0.0.1"])
    path = _crashed_run(folder, "5", in_flight=None)
    done = Results.model_validate_json(path.read_text("utf-8"))
    done.status = RunStatus.COMPLETED
    done.write(path)
    before = path.read_bytes()

    assert settle_open_runs(folder, folder.load()) == []
    assert path.read_bytes() == before


LATE_SERVERAPP = (
    "import sys, time; from pathlib import Path; "
    "from residency.server.run_lock import hold_run; "
    "from residency.server.results import InFlight, Results; "
    "path = Path(sys.argv[1]); hold_run(path.parent); print('held', flush=True); "
    "time.sleep(float(sys.argv[2])); "
    "results = Results.model_validate_json(path.read_text('utf-8')); "
    "results.in_flight = InFlight(round=3, countries=['DE']); results.write(path)"
)


def _serverapp_still_running(path: Path, *, for_s: float) -> subprocess.Popen[str]:
    """An earlier start's ServerApp: holds the run, writes its last in-flight round, exits."""
    process = subprocess.Popen(
        [sys.executable, "-c", LATE_SERVERAPP, str(path), str(for_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_start_waits_for_an_earlier_serverapp_and_settles_what_it_wrote_last(
    tmp_path: Path,
) -> None:
    folder = init_coordinator(tmp_path / "coordinator", names=["127.0.0.1"])
    path = _crashed_run(folder, "41", in_flight=InFlight(round=2, countries=["DE", "FR"]))
    late = _serverapp_still_running(path, for_s=1.0)

    ended = settle_open_runs(folder, folder.load())

    assert late.wait(timeout=5) == 0
    assert [e.run for e in ended] == ["41"]
    verified = verify_ledger(folder.ledger / "ledger.jsonl", _auditor_keys(folder, tmp_path))
    assert verified.problems == []
    assert verified.unconfirmed == {("41", "DE", 3)}  # its round 3, not round 2 read before


def test_a_serverapp_that_outlives_the_wait_stops_the_start_and_nothing_is_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = init_coordinator(tmp_path / "coordinator", names=["127.0.0.1"])
    path = _crashed_run(folder, "41", in_flight=InFlight(round=2, countries=["DE", "FR"]))
    before = path.read_bytes(), (folder.ledger / "ledger.jsonl").read_bytes()
    late = _serverapp_still_running(path, for_s=120)
    monkeypatch.setattr(recovery, "SERVERAPP_EXIT_WAIT_S", 0.5)
    try:
        with pytest.raises(RunDriven, match=f"run 41 is still driven .*\\(pid {late.pid}\\)"):
            settle_open_runs(folder, folder.load())
        assert (path.read_bytes(), (folder.ledger / "ledger.jsonl").read_bytes()) == before
    finally:
        late.send_signal(signal.SIGKILL)
        late.wait()
    assert [e.run for e in settle_open_runs(folder, folder.load())] == ["41"]


def test_a_run_its_serverapp_reported_failed_to_flower_can_still_resume(tmp_path: Path) -> None:
    """A ServerApp stopped by a signal reports its task failed; the run is still found."""
    from flwr.common.constant import Status, SubStatus
    from flwr.supercore.constant import TaskType

    (tmp_path / "state.db").touch()
    state = _link_state(tmp_path / "state.db")
    assert state is not None
    run = state.create_run(
        None, None, None, {"job": "x"}, "default", None, "aid", TaskType.SERVER_APP
    )
    [info] = state.get_run_info(run_ids=[run])
    assert state.finish_task(
        info.primary_task_id, SubStatus.FAILED, "Task failed with unknown error."
    )

    assert recovery.stop_flower_runs(state) == {}  # not open in Flower's eyes
    found = _flower_run(state, str(run), {})
    assert found is not None
    assert found.run_id == run
    assert found.status.status == Status.FINISHED
    assert _flower_run(state, "404", {}) is None
