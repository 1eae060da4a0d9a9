"""A real deployment on loopback: SuperLink and three SuperNodes over TLS with node keys.

Every process is started through the ``residency`` CLI exactly as operators would, and the
job's outcome is compared with the same job in simulation.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deployment_harness import (
    RESIDENCY,
    Federation,
    alive,
    cli,
    descendants,
    free_port,
    wait_until,
)
from residency.cli.simulation import simulate
from residency.common.config.job import load_job
from residency.common.privacy.signing import load_public, public_path
from residency.server.dashboard.state import DashboardState, read_state
from residency.server.results import Results
from toy_federation import LEARNABLE, write_toy_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNTRIES = ("DE", "FR", "ES")


def _stop_a_long_run(
    federation: Federation, root: Path
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """Launch a 50-round job, stop it with `runs stop` once it runs, let `run` notice."""
    job = write_toy_job(root / "long", countries=COUNTRIES, rounds=50)
    launcher = subprocess.Popen(
        [
            RESIDENCY,
            "run",
            str(job),
            "--key",
            str(federation.launcher_key),
            "--coordinator",
            federation.address,
            "--ca",
            str(federation.ca),
            "--output",
            str(root / "long-out"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    connection = ("--coordinator", federation.address, "--ca", str(federation.ca))

    def running() -> list[str]:
        listed = json.loads(cli("runs", "--json", *connection).stdout)
        return [str(r["run-id"]) for r in listed if str(r["status"]).startswith("running")]

    wait_until(lambda: bool(running()), timeout_s=120, what="the long run to be running")
    run_id = running()[0]
    results = federation.coordinator_dir / "runs" / run_id / "results.json"

    def one_round_done() -> bool:
        return results.exists() and bool(json.loads(results.read_text("utf-8"))["rounds"])

    wait_until(one_round_done, timeout_s=180, what="the long run's first round")
    stopped = cli("runs", "stop", run_id, *connection)
    out, err = launcher.communicate(timeout=180)
    return stopped, subprocess.CompletedProcess(launcher.args, launcher.returncode, out, err)


@dataclass
class Deployed:
    federation: Federation
    job_path: Path
    out: Path
    run: subprocess.CompletedProcess[str]
    results: Results
    simulated: Results
    runs_listing: subprocess.CompletedProcess[str]
    stopped: subprocess.CompletedProcess[str]
    detached_run: subprocess.CompletedProcess[str]
    node_rows: list[dict[str, object]]
    exit_codes: dict[str, int]
    released: Results
    dashboard: DashboardState


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    root = tmp_path_factory.mktemp("deployment")
    job_path = write_toy_job(root / "job", countries=COUNTRIES, rounds=2, examples=LEARNABLE)
    simulated = simulate(load_job(job_path), job_path, out_dir=root / "simulated")

    federation = Federation(root / "fed")
    federation.init_coordinator("127.0.0.1", "localhost")
    try:
        federation.start_coordinator()
        for country in COUNTRIES:
            node = federation.init_node(
                country, root / "job" / f"{country.lower()}.csv", budget=100.0
            )  # room for the second, long run on the same data
            federation.admit(node, country)
            federation.start_node(node)
        federation.wait_online(COUNTRIES)
        node_rows = federation.nodes()
        out = root / "deployed"
        run = cli(
            "run",
            str(job_path),
            "--key",
            str(federation.launcher_key),
            "--coordinator",
            federation.address,
            "--ca",
            str(federation.ca),
            "--output",
            str(out),
            timeout_s=600,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        dashboard = read_state(federation.coordinator_dir)  # what the dashboard shows now
        listing = cli(
            "runs", "--json", "--coordinator", federation.address, "--ca", str(federation.ca)
        )
        results = Results.model_validate_json((out / "results.json").read_text("utf-8"))
        release_job = write_toy_job(  # the default pipeline, with two training rounds
            root / "release",
            countries=COUNTRIES,
            schedule=False,
            train='update = "head"\nwarm_start = "prototypes"\nrounds = 2',
        )
        release = cli(
            "run",
            str(release_job),
            "--key",
            str(federation.launcher_key),
            "--coordinator",
            federation.address,
            "--ca",
            str(federation.ca),
            "--output",
            str(root / "release-out"),
            timeout_s=600,
        )
        assert release.returncode == 0, release.stdout + release.stderr
        released = Results.model_validate_json(
            (root / "release-out" / "results.json").read_text("utf-8")
        )
        stopped, detached = _stop_a_long_run(federation, root)
        listing = cli(
            "runs", "--json", "--coordinator", federation.address, "--ca", str(federation.ca)
        )
    finally:
        codes = federation.stop_all()
    # Every process a daemon started (SuperLink, SuperNodes, executors, forked tasks) is gone.
    wait_until(lambda: not federation.leftovers(), timeout_s=30, what="no leftover processes")
    return Deployed(
        federation,
        job_path,
        out,
        run,
        results,
        simulated,
        listing,
        stopped,
        detached,
        node_rows,
        codes,
        released,
        dashboard,
    )


def test_the_dashboard_shows_the_deployed_run_and_its_online_nodes(deployed: Deployed) -> None:
    state = deployed.dashboard
    assert state.kind == "coordinator"
    assert sorted((n.country, n.online) for n in state.nodes) == [
        (country, True) for country in sorted(COUNTRIES)
    ]
    (run,) = state.runs
    assert run.status == "completed"
    assert [r.round for r in run.rounds] == [r.round for r in deployed.results.rounds]
    assert {c.country: c.epsilon for c in run.countries} == {
        country: privacy.epsilon for country, privacy in deployed.results.privacy.items()
    }
    for country in COUNTRIES:
        burndown = run.figures[f"burndown-{country}"]
        names = {trace.get("name") for trace in burndown["data"]}
        assert "run ε" in names
        # A node's lifetime ε stays in its own ledger: the coordinator's page cannot draw it.
        assert "dataset ε, lifetime" not in names


def test_job_completes_over_tls_with_node_authentication(deployed: Deployed) -> None:
    results = deployed.results
    assert results.status == "completed"
    assert [r.round for r in results.rounds] == [1, 2]
    for result in results.rounds:
        assert {n.country for n in result.nodes} == set(COUNTRIES)
        assert all(n.status == "ok" for n in result.nodes)
    assert sorted(r["country"] for r in deployed.node_rows) == sorted(COUNTRIES)


def test_the_default_pipeline_runs_deployed_and_learns(deployed: Deployed) -> None:
    """A release, then the head over standardised features, over TLS: one target, learned."""
    released = deployed.released
    assert released.status == "completed"
    assert released.final is not None
    assert released.final.accuracy is not None
    assert released.final.accuracy > 0.8
    assert [r.update for r in released.rounds] == ["prototypes", "head", "head"]
    assert {(n.sample_rate, n.steps) for n in released.rounds[0].nodes} == {(1.0, 1)}
    for country in COUNTRIES:
        spent = released.privacy[country]
        assert spent.rounds_averaged == 3
        assert spent.epsilon is not None
        assert 7.9 < spent.epsilon <= 8.0


def test_epsilon_matches_simulation_exactly(deployed: Deployed) -> None:
    # Epsilon depends only on (noise, sample rate, steps, delta): no tolerance is needed.
    for country in COUNTRIES:
        got, want = deployed.results.privacy[country], deployed.simulated.privacy[country]
        assert got.epsilon == pytest.approx(want.epsilon, rel=1e-12)
        assert (got.noise_multiplier, got.sample_rate, got.steps) == (
            want.noise_multiplier,
            want.sample_rate,
            want.steps,
        )


def test_accuracy_matches_simulation(deployed: Deployed) -> None:
    # Each node draws its noise and batches from its own OS entropy, so the two runs differ
    # by DP noise, not only float order; on LEARNABLE rows both land well above chance, and
    # 0.2 (18 of the 90 test examples) is wider than the spread measured across runs.
    got = deployed.results.final
    want = deployed.simulated.final
    assert got is not None
    assert want is not None
    assert got.accuracy is not None
    assert want.accuracy is not None
    assert got.accuracy == pytest.approx(want.accuracy, abs=0.2)
    assert got.accuracy > 0.6


def test_outputs_match_simulate_layout(deployed: Deployed) -> None:
    final = deployed.results.final
    assert final is not None
    model_dir = Path(final.model_dir)
    assert model_dir.parent.parent == deployed.federation.coordinator_dir / "runs"
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir.parent / "results.json").is_file()
    assert "round 2" in deployed.run.stdout


def test_runs_lists_and_stops_runs(deployed: Deployed) -> None:
    assert deployed.stopped.returncode == 0, deployed.stopped.stderr
    assert "stopped" in deployed.stopped.stdout
    assert deployed.detached_run.returncode == 3  # the launcher saw its run end early
    assert "was stopped" in deployed.detached_run.stderr
    results = sorted(deployed.federation.coordinator_dir.glob("runs/*/results.json"))
    statuses = sorted(json.loads(path.read_text("utf-8"))["status"] for path in results)
    assert statuses == ["completed", "completed", "stopped"]  # the job, the release, the long run
    assert deployed.runs_listing.returncode == 0, deployed.runs_listing.stderr
    runs = json.loads(deployed.runs_listing.stdout)
    assert sorted(run["status"] for run in runs) == [
        "finished:completed",
        "finished:completed",
        "finished:stopped",
    ]


def test_daemons_stop_cleanly_on_sigint(deployed: Deployed) -> None:
    assert set(deployed.exit_codes.values()) == {0}, deployed.exit_codes


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Federation]:
    federation = Federation(tmp_path)
    federation.init_coordinator()
    federation.start_coordinator()
    yield federation
    federation.stop_all()


def _node(federation: Federation, tmp_path: Path, country: str = "DE") -> Path:
    data = tmp_path / "data.csv"
    data.write_text("text,label\nhello,pos\n", encoding="utf-8")
    return federation.init_node(country, data)


def test_unregistered_node_key_is_refused(coordinator: Federation, tmp_path: Path) -> None:
    node = _node(coordinator, tmp_path)
    daemon = coordinator.start_node(node)
    assert daemon.process.wait(timeout=120) == 1
    assert "refused this node's key" in daemon.output()
    assert coordinator.nodes() == []


def test_node_start_says_why_it_cannot_reach_its_coordinator_and_keeps_trying(
    coordinator: Federation, tmp_path: Path
) -> None:
    node = _node(coordinator, tmp_path)
    coordinator.admit(node, "DE")
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    daemon = coordinator.start_node(node, address=nowhere)
    said = f"node DE: cannot reach the coordinator {nowhere}: nothing listens there"
    wait_until(lambda: said in daemon.output(), timeout_s=60, what="the retry and its reason")
    assert "retrying in" in daemon.output()
    assert daemon.process.poll() is None  # a daemon survives its coordinator being away
    assert daemon.stop() == 0


def test_node_trusting_another_ca_is_refused(coordinator: Federation, tmp_path: Path) -> None:
    other = Federation(tmp_path / "other")
    other.init_coordinator()
    node = _node(coordinator, tmp_path)
    coordinator.admit(node, "DE")
    daemon = coordinator.start_node(node, ca=other.ca)
    assert daemon.process.wait(timeout=120) == 1
    assert "not signed by the given CA" in daemon.output()
    assert all(row["status"] != "online" for row in coordinator.nodes())


def test_coordinator_refuses_node_authentication_without_tls(tmp_path: Path) -> None:
    federation = Federation(tmp_path)
    federation.init_coordinator()
    done = cli("coordinator", "start", str(federation.coordinator_dir), "--insecure")
    assert done.returncode == 2
    assert "node authentication requires TLS" in done.stderr
    # Flower's SuperLink itself refuses the combination too (exit 104).
    superlink = Path(sys.executable).parent / "flower-superlink"
    raw = subprocess.run(
        [str(superlink), "--insecure", "--enable-supernode-auth", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert raw.returncode != 0


def test_admitted_node_comes_online_and_stops(coordinator: Federation, tmp_path: Path) -> None:
    node = _node(coordinator, tmp_path)
    coordinator.admit(node, "DE")
    daemon = coordinator.start_node(node)
    coordinator.wait_online(["DE"])
    wait_until(
        lambda: f"node DE: connected to {coordinator.address}" in daemon.output(),
        timeout_s=30,
        what="node start to say it is connected",
    )
    shown = read_state(coordinator.coordinator_dir).nodes  # the dashboard, from SuperLink's db
    assert [(n.country, n.online) for n in shown] == [("DE", True)]
    assert shown[0].last_seen is not None
    assert daemon.stop(sig=signal.SIGTERM) == 0  # what systemd, Docker and Kubernetes send
    wait_until(
        lambda: all(row["status"] != "online" for row in coordinator.nodes()),
        timeout_s=60,
        what="the node to go offline",
    )
    assert [(n.country, n.online) for n in read_state(coordinator.coordinator_dir).nodes] == [
        ("DE", False)
    ]
    again = cli(
        "coordinator",
        "admit",
        str(node / "keys" / "node.pub"),
        "--country",
        "DE",
        "--dir",
        str(coordinator.coordinator_dir),
    )
    assert again.returncode == 2
    assert "already admitted" in again.stderr
    assert coordinator.daemons[0].stop(sig=signal.SIGTERM) == 0


def test_a_sigkilled_node_supervisor_takes_its_supernode_and_executor_with_it(
    coordinator: Federation, tmp_path: Path
) -> None:
    """Issue 26, point 3: no orphaned SuperNode dialling its coordinator for ever."""
    node = _node(coordinator, tmp_path)
    coordinator.admit(node, "DE")
    daemon = coordinator.start_node(node)
    coordinator.wait_online(["DE"])
    below = descendants(daemon.process.pid)
    commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in below}
    assert any(b"residency.client.supernode" in c for c in commands.values())
    assert any(b"residency.client.executor" in c for c in commands.values())

    daemon.process.kill()  # SIGKILL: nothing can be forwarded
    daemon.process.wait()

    wait_until(
        lambda: not any(alive(pid) for pid in below),
        timeout_s=30,
        what="the node's SuperNode and executor to follow their supervisor",
    )
    wait_until(
        lambda: all(row["status"] != "online" for row in coordinator.nodes()),
        timeout_s=60,
        what="the node to go offline",
    )


def test_a_launch_the_coordinator_refuses_is_said_at_once_and_listed_then_an_edit_applies(
    coordinator: Federation, tmp_path: Path
) -> None:
    """Issue 26, point 4: refused before "started", exit 4, listed; trust edits need no restart."""
    assert cli("launcher", "init", str(tmp_path / "newcomer")).returncode == 0
    newcomer_key = tmp_path / "newcomer" / "launcher.key"
    newcomer = load_public(public_path(newcomer_key))
    job = write_toy_job(tmp_path / "job", countries=("DE",), rounds=1)
    node = coordinator.init_node("DE", tmp_path / "job" / "de.csv")
    settings = node / "node.toml"
    settings.write_text(
        settings.read_text("utf-8").replace(
            "trusted_launchers = [", f'trusted_launchers = [\n    "{newcomer}",', 1
        ),
        "utf-8",
    )
    coordinator.admit(node, "DE")
    coordinator.start_node(node)
    coordinator.wait_online(["DE"])

    def launch(out: str) -> subprocess.CompletedProcess[str]:
        return coordinator.run(job, tmp_path / out, key=newcomer_key)

    started = time.monotonic()
    refused = launch("refused")
    took = time.monotonic() - started
    said = refused.stdout + refused.stderr
    assert refused.returncode == 4, said  # docs/deploy.md: the coordinator refused the request
    assert "the coordinator refused the job: job: " in said
    assert "which coordinator.toml does not trust" in said
    assert " started" not in said  # said before any run could start
    assert took < 30, took
    listed = json.loads(
        cli(
            "runs", "--coordinator", coordinator.address, "--ca", str(coordinator.ca), "--json"
        ).stdout
    )
    [run] = [r for r in listed if str(r.get("status", "")).startswith("finished")]
    kept = Results.model_validate_json(
        (coordinator.coordinator_dir / "runs" / str(run["run-id"]) / "results.json").read_text()
    )
    assert (kept.status, kept.job) == ("failed", "toy")
    assert kept.error is not None
    assert "does not trust" in kept.error
    ledger = (coordinator.coordinator_dir / "ledger" / "ledger.jsonl").read_text("utf-8")
    finished = [json.loads(line) for line in ledger.splitlines() if "run-finished" in line]
    assert [(e["run"], e["detail"]["status"]) for e in finished] == [
        (str(run["run-id"]), "refused")
    ]

    toml = coordinator.coordinator_dir / "coordinator.toml"  # the operator trusts the key
    toml.write_text(
        toml.read_text("utf-8").replace(
            "trusted_launchers = [", f'trusted_launchers = [\n    "{newcomer}",', 1
        ),
        "utf-8",
    )
    accepted = launch("accepted")  # no coordinator restart
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


def test_node_enforces_its_own_budget_and_only_job_countries_take_part(
    coordinator: Federation, tmp_path: Path
) -> None:
    job = write_toy_job(tmp_path / "job", countries=("DE",), rounds=1)  # target epsilon 8
    data = tmp_path / "job" / "de.csv"
    for country, budget in (("DE", 4.0), ("IT", 8.0)):  # IT: admitted, online, not in the job
        node = coordinator.init_node(country, data, budget=budget)
        coordinator.admit(node, country)
        coordinator.start_node(node)
    coordinator.wait_online(["DE", "IT"])

    out = tmp_path / "out"
    run = coordinator.run(job, out)

    assert run.returncode == 3, run.stdout + run.stderr
    # The node's code and numbers, rendered by the coordinator: no free text crosses.
    refusal = "DE refused round 1: target epsilon 8 exceeds the node's budget 4"
    assert refusal in run.stdout  # shown live
    results = json.loads((out / "results.json").read_text("utf-8"))
    assert results["status"] == "failed"
    assert refusal in results["error"]
    assert "IT" not in results["error"]
    it_log = tmp_path / "node-IT" / "logs" / "node.log"
    assert not it_log.exists() or "round 1" not in it_log.read_text("utf-8")


def _node_status(node: Path) -> dict[str, object]:
    done = cli("node", "status", str(node), "--json")
    assert done.returncode == 0, done.stderr
    status: dict[str, object] = json.loads(done.stdout)
    return status


def test_a_job_one_country_cannot_afford_to_the_end_is_refused_before_anyone_is_charged(
    coordinator: Federation, tmp_path: Path
) -> None:
    """Issue 26, point 2: FR has 9 of which a first job spent 8; the second job charges nobody.

    Before, FR accepted the second job's first round (and DE trained it too), then refused
    round 2; now every node confirms the whole job before any round is sent.
    """
    first = write_toy_job(tmp_path / "job", countries=("FR",), rounds=1)  # target epsilon 8
    data = tmp_path / "job" / "fr.csv"
    nodes = {}
    for country, budget in (("DE", 20.0), ("FR", 9.0)):
        nodes[country] = coordinator.init_node(country, data, budget=budget)
        coordinator.admit(nodes[country], country)
        coordinator.start_node(nodes[country])
    coordinator.wait_online(["DE", "FR"])
    done = coordinator.run(first, tmp_path / "first")
    assert done.returncode == 0, done.stdout + done.stderr

    second = write_toy_job(tmp_path / "second", countries=("DE", "FR"), rounds=2)
    run = coordinator.run(second, tmp_path / "out")

    assert run.returncode == 3, run.stdout + run.stderr
    refusal = "FR refused round 1: dataset budget 9.00, 8.00 spent or held for other jobs"
    assert refusal in run.stdout  # shown live, in the node's code and numbers
    results = json.loads((tmp_path / "out" / "results.json").read_text("utf-8"))
    assert results["status"] == "failed"
    assert refusal in results["error"]
    assert "1 of 2 countries confirmed the whole job" in results["error"]
    assert results["error"].endswith("nothing was charged")
    assert results["rounds"] == []
    assert results["privacy"] == {}
    de, fr = _node_status(nodes["DE"]), _node_status(nodes["FR"])
    assert de["datasets"] == []  # DE confirmed, and was never sent a round
    assert de["held"] == []  # and was told the job ended, so it holds nothing for it
    [fr_dataset] = fr["datasets"]  # type: ignore[misc]
    assert fr_dataset["rounds"] == 1  # the first job's round only
    ledger = (coordinator.coordinator_dir / "ledger" / "ledger.jsonl").read_text("utf-8")
    assert ledger.count('"kind":"refusal"') == 1
    # Each operator sees it from their own terminal, as it happens.
    by_node = {d.name: d.output() for d in coordinator.daemons}
    assert "FR refused round 1: the whole job does not fit" in by_node["node node-FR"]
    assert "FR trained round 1 of job" in by_node["node node-FR"]  # the first job
    assert "DE confirmed job" in by_node["node node-DE"]


def test_auditor_verifies_the_coordinators_ledger_with_keys_from_each_party(
    deployed: Deployed, tmp_path: Path
) -> None:
    """The auditor collects each party's public key, then `audit verify` checks both runs."""
    coordinator = deployed.federation.coordinator_dir
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(coordinator / "keys" / "ledger.key.pub", keys / "coordinator.pub")
    node_ledgers: list[str] = []
    for country in COUNTRIES:
        node = deployed.federation.root / f"node-{country}"
        shutil.copy(node / "keys" / "record.key.pub", keys / f"{country}.pub")
        node_ledgers += ["--node-ledger", str(node / "state" / "ledger.jsonl")]
    ledger = coordinator / "ledger" / "ledger.jsonl"

    done = cli("audit", "verify", str(ledger), "--keys", str(keys), "--json", *node_ledgers)

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    completed = [r for r in report["records"] if r["run"] == _completed_run(deployed)]
    assert sorted((r["country"], r["round"]) for r in completed) == sorted(
        (c, n) for c in COUNTRIES for n in (1, 2)
    )
    for record in completed:
        summary = deployed.results.privacy[record["country"]]
        if record["round"] == 2:
            assert record["epsilon"] == summary.epsilon
        assert record["epsilon_dp_accounting"] == pytest.approx(record["epsilon_opacus"], rel=0.03)


def _completed_run(deployed: Deployed) -> str:
    final = deployed.results.final
    assert final is not None
    return Path(final.model_dir).parent.name
