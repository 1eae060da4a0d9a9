"""Faults in a real deployment: a node dies mid-round, then the coordinator is SIGKILLed.

SuperLink, SuperNodes and executors are started through the ``residency`` CLI over TLS with
node authentication, as operators run them; what is checked is what an operator and an
auditor would look at: exit codes, ``results.json``, the processes left, every ledger.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import hostile_app
import pytest

from deployment_harness import (
    Federation,
    alive,
    cli,
    descendants,
    port_open,
    processes_mentioning,
    wait_until,
)
from residency.cli.bundle import write_app_bundle, write_bundle
from residency.cli.flower import flattened
from residency.common.config.job import load_job
from residency.common.config.signed_job import sign_job
from residency.common.privacy.signing import load_public, load_signer, public_path
from residency.server.results import Results
from toy_federation import write_toy_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNTRIES = ("DE", "FR", "ES")
ROUND_TIMEOUT_S = 20
SECRET = "root:x:0:0:root:/root:/bin/bash\n"
TRAIN = f'update = "head"\nround_timeout_s = {ROUND_TIMEOUT_S}'
# Steps 4 and 5 run two jobs on the same nodes at once (one resumed, one new): a node starts
# one ClientApp at a time, so a confirmation can wait behind the other run's (about 10 s each
# here). What they check is resuming, not deadlines.
SHARED_TRAIN = 'update = "head"\nround_timeout_s = 60'


def _results_files(federation: Federation) -> set[Path]:
    """Every run's results.json on the coordinator now (refused launches' runs included)."""
    return set((federation.coordinator_dir / "runs").glob("*/results.json"))


def _run_results(federation: Federation, known: set[Path]) -> Path:
    """The results.json of the run that started after ``known`` ones."""
    found: list[Path] = []

    def started() -> bool:
        found[:] = sorted(set((federation.coordinator_dir / "runs").glob("*/results.json")) - known)
        return bool(found)

    wait_until(started, timeout_s=120, what="the run's results.json")
    return found[0]


def _rounds_done(path: Path) -> int:
    try:
        return len(json.loads(path.read_text("utf-8"))["rounds"])
    except (OSError, ValueError):
        return 0


def _status(path: Path) -> str:
    try:
        return str(json.loads(path.read_text("utf-8"))["status"])
    except (OSError, ValueError):
        return ""


def _last_of(path: Path, name: str) -> Results:
    """The run that finally carried the job of ``path`` to its end, following each resume."""
    while True:
        wait_until(
            lambda path=path: _status(path) not in ("", "queued", "running"),  # type: ignore[misc]
            timeout_s=300,
            what=f"the {name} run to end",
        )
        results = Results.model_validate_json(path.read_text("utf-8"))
        if results.resumed_as is None:
            return results
        path = path.parent.parent / results.resumed_as / "results.json"


def _received_rounds(node_dir: Path) -> int:
    log = node_dir / "logs" / "supernode.log"
    text = log.read_text("utf-8", "replace") if log.exists() else ""
    return text.count("Receiving: train message")


@dataclass
class Hostile:
    flwr_run: subprocess.CompletedProcess[str]
    marker: Path
    replies: list[dict[str, int | None]] | None


def _renamed_job(folder: Path, name: str) -> Path:
    job = write_toy_job(folder, countries=COUNTRIES, train=TRAIN)
    job.write_text(job.read_text("utf-8").replace('name = "toy"', f'name = "{name}"'), "utf-8")
    return job


def _refused_signatures(federation: Federation, root: Path) -> dict[str, str]:
    """What a launcher hears for a key nobody trusts, and for a job edited after signing."""
    said: dict[str, str] = {}
    assert cli("launcher", "init", str(root / "stranger")).returncode == 0
    stranger = cli(
        "run",
        str(_renamed_job(root / "untrusted", "untrusted")),
        "--key",
        str(root / "stranger" / "launcher.key"),
        "--coordinator",
        federation.address,
        "--ca",
        str(federation.ca),
        "--output",
        str(root / "untrusted-out"),
    )
    said["untrusted"] = f"{stranger.returncode} {stranger.stdout} {stranger.stderr}"
    job = load_job(_renamed_job(root / "edited", "edited"), remote=True)
    signed = sign_job(job, load_signer(federation.launcher_key))
    body = json.loads(signed.body)
    body["privacy"]["target_epsilon"] = 50.0  # after signing
    edited = signed.model_copy(update={"body": json.dumps(body, separators=(",", ":"))})
    write_bundle(edited, root / "edited-bundle")
    done = federation.flwr_run(root / "edited-bundle", timeout_s=240)
    said["edited"] = flattened(done.stdout + done.stderr)  # Flower's panel, on one line
    return said


def _submit_hostile_app(federation: Federation, root: Path) -> Hostile:
    """Submit ``hostile_app`` with Flower's own CLI, as anyone reaching the port could."""
    bundle = root / "hostile-bundle"
    bundle.mkdir()
    shutil.copy(hostile_app.__file__, bundle / "hostile_app.py")
    marker, report = root / "pwned", root / "hostile-report.json"
    write_app_bundle(
        bundle,
        name="hostile",
        version="1.0.0",
        description="not Residency",
        serverapp="hostile_app:server_app",
        clientapp="hostile_app:client_app",
        config={hostile_app.MARKER_KEY: str(marker), hostile_app.REPORT_KEY: str(report)},
    )
    done = federation.flwr_run(bundle, timeout_s=240)
    replies = json.loads(report.read_text("utf-8")) if report.exists() else None
    return Hostile(done, marker, replies)


@dataclass
class Faults:
    federation: Federation
    hostile: Hostile
    untrusted: dict[str, str]
    leak: subprocess.CompletedProcess[str]
    leak_log: str
    dropout: Results
    dropout_run: subprocess.CompletedProcess[str]
    crashed_path: Path
    crashed_before_restart: Results
    crashed: Results
    resumed: Results
    restart_output: str
    orphaned_path: Path
    orphaned: Results
    paused: Results
    continued: dict[str, Results]
    last_output: str
    left_running: set[int]
    port_after_kill: bool
    left_after_stop: set[int]


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Faults:
    root = tmp_path_factory.mktemp("faults")
    data = write_toy_job(root / "data", countries=COUNTRIES).parent
    federation = Federation(root / "fed")
    federation.init_coordinator("127.0.0.1")
    node_dirs = {}
    try:
        coordinator = federation.start_coordinator()
        for country in COUNTRIES:
            node = federation.init_node(country, data / f"{country.lower()}.csv", budget=100.0)
            federation.admit(node, country)
            federation.start_node(node)
            node_dirs[country] = node
        federation.wait_online(COUNTRIES)

        # 0. A launcher submits its own app code instead of Residency's.
        hostile = _submit_hostile_app(federation, root)

        untrusted = _refused_signatures(federation, root)

        # 1. A launcher names a symlink out of the coordinator's data folder as its test set.
        (root / "secret.txt").write_text(SECRET, "utf-8")
        (federation.coordinator_dir / "data" / "leak.csv").symlink_to(root / "secret.txt")
        leaky = write_toy_job(root / "leaky", countries=COUNTRIES, train=TRAIN)
        leaky.write_text(
            leaky.read_text("utf-8").replace('test = "test.csv"', 'test = "leak.csv"'), "utf-8"
        )
        leak = cli(
            "run",
            str(leaky),
            "--key",
            str(federation.launcher_key),
            "--coordinator",
            federation.address,
            "--ca",
            str(federation.ca),
            "--output",
            str(root / "leaky-out"),
        )
        leak_log = (root / "leaky-out" / "run.log").read_text("utf-8", "replace")

        # 2. ES dies while it trains round 2 (its SuperNode, executor and supervisor at once).
        job = write_toy_job(root / "dropout", countries=COUNTRIES, rounds=3, train=TRAIN)
        before = _results_files(federation)  # the refused launches above are runs too
        launcher = federation.launch(job, root / "dropout-out")
        results_path = _run_results(federation, before)
        wait_until(
            lambda: _received_rounds(node_dirs["ES"]) >= 2,
            timeout_s=180,
            what="ES to receive round 2",
        )
        for pid in processes_mentioning(str(node_dirs["ES"])):
            for victim in {pid, *descendants(pid)}:
                with_signal(victim, signal.SIGKILL)
        out, _ = launcher.communicate(timeout=300)
        dropout_run = subprocess.CompletedProcess(launcher.args, launcher.returncode, out, "")
        dropout = Results.model_validate_json(results_path.read_text("utf-8"))

        # 3. The coordinator host loses power once round 1 of a run has closed: every
        #    coordinator process dies at once, nothing can write anything.
        crash_job = write_toy_job(root / "crash", countries=("DE", "FR"), rounds=3, train=TRAIN)
        launcher = federation.launch(crash_job, root / "crash-out")
        crashed_path = _run_results(federation, before | {results_path})
        wait_until(lambda: _rounds_done(crashed_path) >= 1, timeout_s=180, what="round 1")
        for pid in {coordinator.process.pid, *descendants(coordinator.process.pid)}:
            with_signal(pid, signal.SIGKILL)
        coordinator.process.wait()
        crashed_before_restart = Results.model_validate_json(crashed_path.read_text("utf-8"))
        with_signal(launcher.pid, signal.SIGINT)  # the launcher lost its stream; stop it
        launcher.communicate(timeout=60)

        restarted = federation.start_coordinator()
        federation.wait_online(("DE", "FR"))
        crashed = Results.model_validate_json(crashed_path.read_text("utf-8"))
        assert crashed.resumed_as is not None, crashed.error
        resumed_path = crashed_path.parent.parent / crashed.resumed_as / "results.json"
        wait_until(
            lambda: _status(resumed_path) not in ("", "queued", "running"),
            timeout_s=300,
            what="the resumed run to end",
        )
        resumed = Results.model_validate_json(resumed_path.read_text("utf-8"))
        restart_output = restarted.output()

        # 4. Only `coordinator start` is SIGKILLed, mid-run: its SuperLink and ServerApp follow.
        stop_job = write_toy_job(
            root / "orphan", countries=("DE", "FR"), rounds=5, train=SHARED_TRAIN
        )
        launcher = federation.launch(stop_job, root / "orphan-out")
        orphaned_path = _run_results(
            federation, before | {results_path, crashed_path, resumed_path}
        )
        wait_until(lambda: _rounds_done(orphaned_path) >= 1, timeout_s=180, what="round 1")
        below = descendants(restarted.process.pid)
        restarted.process.kill()
        restarted.process.wait()
        wait_until(
            lambda: not any(alive(pid) for pid in below),
            timeout_s=60,
            what="SuperLink and ServerApp to stop",
        )
        left_running = {pid for pid in below if alive(pid)}
        port_after_kill = port_open(federation.host, federation.port)
        orphaned = Results.model_validate_json(orphaned_path.read_text("utf-8"))
        with_signal(launcher.pid, signal.SIGINT)
        launcher.communicate(timeout=60)

        # 5. The operator restarts the coordinator with Ctrl-C while a run goes on; both that
        #    run and the one orphaned above resume at the next start.
        again = federation.start_coordinator()
        federation.wait_online(("DE", "FR"))
        paused_job = write_toy_job(
            root / "paused", countries=("DE", "FR"), rounds=3, train=SHARED_TRAIN
        )
        launcher = federation.launch(paused_job, root / "paused-out")
        paused_path = _run_results(federation, _results_files(federation))
        wait_until(lambda: _rounds_done(paused_path) >= 1, timeout_s=180, what="round 1")
        serving = descendants(again.process.pid)  # its SuperLink, SuperExec and ServerApps
        assert again.stop() == 0  # Ctrl-C: the coordinator's own shutdown
        left_after_stop = {pid for pid in serving if alive(pid)}
        paused = Results.model_validate_json(paused_path.read_text("utf-8"))
        launcher.communicate(timeout=60)
        last = federation.start_coordinator()
        federation.wait_online(("DE", "FR"))
        continued = {
            name: _last_of(path, name)
            for name, path in (("orphaned", orphaned_path), ("paused", paused_path))
        }
        last_output = last.output()
    finally:
        federation.stop_all()
    wait_until(lambda: not federation.leftovers(), timeout_s=30, what="no leftover processes")
    return Faults(
        federation,
        hostile,
        untrusted,
        leak,
        leak_log,
        dropout,
        dropout_run,
        crashed_path,
        crashed_before_restart,
        crashed,
        resumed,
        restart_output,
        orphaned_path,
        orphaned,
        paused,
        continued,
        last_output,
        left_running,
        port_after_kill,
        left_after_stop,
    )


def with_signal(pid: int, sig: signal.Signals) -> None:
    """Signal a process this test started, if it still runs."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def test_no_party_runs_code_a_launcher_bundled(faults: Faults) -> None:
    """The bundle's apps would leave markers; coordinator and nodes run their installed apps."""
    marker = faults.hostile.marker
    assert not marker.with_name(marker.name + ".server").exists()
    assert not marker.with_name(marker.name + ".node").exists()
    assert faults.hostile.replies is None  # the coordinator refused the unsigned launch
    said = flattened(faults.hostile.flwr_run.stdout + faults.hostile.flwr_run.stderr)
    assert "job: not signed" in said
    for country in COUNTRIES:
        ledger = faults.federation.root / f"node-{country}" / "state" / "ledger.jsonl"
        entries = map(json.loads, ledger.read_text("ascii").splitlines())
        spent_on = {e["job"] for e in entries if e["kind"] in ("charge", "record")}
        assert spent_on <= {"toy"}, spent_on  # every charge is for a signed toy job


def test_the_coordinator_refuses_an_untrusted_key_and_an_edited_job(faults: Faults) -> None:
    untrusted, edited = faults.untrusted["untrusted"], faults.untrusted["edited"]
    assert untrusted.startswith("4 "), untrusted  # docs/deploy.md: the coordinator refused
    assert "the coordinator refused the job: job: " in untrusted
    assert "which coordinator.toml does not trust" in untrusted
    assert " started" not in untrusted  # refused before Flower made it a run that starts
    assert "does not match the job (edited after signing)" in edited
    for country in COUNTRIES:
        ledger = faults.federation.root / f"node-{country}" / "state" / "ledger.jsonl"
        jobs = {json.loads(line).get("job") for line in ledger.read_text("ascii").splitlines()}
        assert not jobs & {"untrusted", "edited"}  # no node even heard of them


def test_a_job_naming_a_file_outside_the_data_folder_is_refused_unread(
    faults: Faults,
) -> None:
    said = faults.leak.stdout + faults.leak.stderr + faults.leak_log
    assert faults.leak.returncode == 4, said
    assert "job: data.test: 'leak.csv' is not a file in the coordinator's data folder" in said
    assert "root:x" not in said
    assert "/bin/bash" not in said


def test_a_node_that_dies_mid_round_is_dropped_and_the_job_completes(faults: Faults) -> None:
    assert faults.dropout_run.returncode == 0, faults.dropout_run.stdout
    results = faults.dropout
    assert results.status == "completed"
    assert [r.dropped for r in results.rounds] == [[], ["ES"], ["ES"]]
    by_round = [{n.country: n for n in r.nodes} for r in results.rounds]
    assert all(n.status == "ok" for n in by_round[0].values())
    reason = by_round[1]["ES"].reason or ""
    assert reason.startswith("ES sent no reply to round 2 within ")  # the wait it really took
    assert ROUND_TIMEOUT_S <= float(reason.split()[-2]) <= ROUND_TIMEOUT_S + 2
    for nodes in by_round[1:]:
        assert (nodes["DE"].status, nodes["FR"].status) == ("ok", "ok")
    assert "dropped: ES" in faults.dropout_run.stdout


def test_a_killed_coordinator_takes_its_superlink_and_serverapp_with_it(faults: Faults) -> None:
    assert faults.left_running == set()
    assert not faults.port_after_kill
    orphaned = faults.orphaned  # the ServerApp left its run, round in flight, to resume
    assert orphaned.status == "running"
    assert orphaned.finished_at is None


def test_a_coordinator_stopped_by_its_operator_resumes_its_runs_at_the_next_start(
    faults: Faults,
) -> None:
    assert faults.left_after_stop == set()  # no ServerApp lives on to write over its run
    paused = faults.paused
    assert paused.status == "running"  # Ctrl-C of `coordinator start` is not `runs stop`
    assert paused.rounds
    for name, continued in faults.continued.items():
        assert continued.status == "completed", (name, continued.error)
        assert continued.resumed  # every run this job went through, oldest first
        done = [r.round for r in continued.rounds]
        assert done == sorted(set(done))  # no round twice
        for privacy in continued.privacy.values():
            assert privacy.epsilon is not None
            assert privacy.epsilon <= privacy.target_epsilon * (1 + 1e-6)
    assert "resumed the job as run" in faults.last_output


def _charged_rounds(faults: Faults, country: str, run: str) -> set[int]:
    ledger = faults.federation.root / f"node-{country}" / "state" / "ledger.jsonl"
    return {
        entry["round"]
        for entry in map(json.loads, ledger.read_text("ascii").splitlines())
        if entry.get("run") == run and entry["kind"] == "record"
    }


def test_a_restart_resumes_the_interrupted_job_within_each_countrys_target(
    faults: Faults,
) -> None:
    """Every coordinator process died after round 1 of 3; `coordinator start` resumes the job."""
    assert faults.crashed_before_restart.status == "running"  # nobody could write the end
    crashed, resumed = faults.crashed, faults.resumed
    run = faults.crashed_path.parent.name
    assert crashed.status == "resumed"
    assert crashed.resumed_as is not None
    assert f"resumed the job as run {crashed.resumed_as}" in (crashed.error or "")
    assert f"run {run}: the coordinator stopped" in faults.restart_output
    assert resumed.status == "completed", resumed.error
    assert resumed.final is not None
    [continued] = resumed.resumed
    assert continued.from_run == run
    done = len(crashed.rounds)
    lost = continued.lost_round
    assert continued.next_round == (lost or done) + 1
    assert [r.round for r in resumed.rounds] == [
        n for n in range(1, 4) if n != lost
    ]  # every round once, but the one in flight at the crash, which is never sent again
    for country in ("DE", "FR"):
        charged = _charged_rounds(faults, country, run)
        assert max(charged) <= done + 1, charged  # at most the round in flight at the crash
        again = _charged_rounds(faults, country, crashed.resumed_as)
        assert again == set(range(continued.next_round, 4))
        assert not charged & again  # no round charged twice
        privacy = resumed.privacy[country]
        assert privacy.epsilon is not None
        assert privacy.epsilon <= privacy.target_epsilon * (1 + 1e-6)  # the job's one account
        assert privacy.rounds_charged == len(charged - {lost}) + len(again)  # records received
        orphaned = _charged_rounds(faults, country, faults.orphaned_path.parent.name)
        assert max(orphaned) <= len(faults.orphaned.rounds) + 1


def test_every_ledger_verifies_after_the_faults(faults: Faults, tmp_path: Path) -> None:
    root = faults.federation.root
    coordinator = faults.federation.coordinator_dir
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(coordinator / "keys" / "ledger.key.pub", keys / "coordinator.pub")
    node_ledgers: list[str] = []
    for country in COUNTRIES:
        shutil.copy(root / f"node-{country}" / "keys" / "record.key.pub", keys / f"{country}.pub")
        node_ledgers += ["--node-ledger", str(root / f"node-{country}" / "state" / "ledger.jsonl")]

    done = cli(
        "audit",
        "verify",
        str(coordinator / "ledger" / "ledger.jsonl"),
        "--keys",
        str(keys),
        *node_ledgers,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "VERIFIED" in done.stdout
    as_json = cli(
        "audit",
        "verify",
        str(coordinator / "ledger" / "ledger.jsonl"),
        "--keys",
        str(keys),
        "--json",
        *node_ledgers,
    )
    launcher = load_public(public_path(faults.federation.launcher_key))
    records = json.loads(as_json.stdout)["records"]
    assert records
    assert {r["launcher"] for r in records} == {launcher}  # who spent what
