"""Round overhead: a deployed round's wall time against the same round in simulation, measured.

A federated round cannot end before its slowest node has trained; everything above that
(message transport, SuperNode polling, process start-up, aggregation, scoring) is overhead.
Flower's stock SuperNode starts a fresh ``flwr-clientapp`` process per message, which
re-imports torch, transformers and Opacus every round; Residency's node daemon forks a warm
executor instead (``residency.client.executor``). Nodes do not say how long they trained (an
un-noised timing never leaves a node), so everything is measured on the coordinator: this
bench runs one job three ways in one go and prints, per round, the round's wall time and, for
the deployed modes, how much longer it took than the same round in simulation, where messages
stay in one process and the nodes train the same job on the same data and thread counts. All
is read from each run's ``results.json``:

* simulation: ``residency simulate`` (Flower's simulation engine, Ray);
* deployment, fork executor: ``residency coordinator start`` and ``residency node start``
  (TLS, node keys) on loopback, then ``residency run``;
* deployment, stock Flower: the same nodes started as plain ``flower-supernode
  --isolation subprocess`` (the flags ``residency node start`` uses, but Flower launches a
  ``flwr-clientapp`` process per message), then ``residency run`` again.

All nodes share this machine, so each node process gets ``cores // nodes`` torch threads
(``OMP_NUM_THREADS``), as Ray gives each simulated node one CPU; otherwise concurrent nodes
oversubscribe the cores and their training time, not the round overhead, dominates. Every
process is started here and ended here by its PID with SIGINT; ports are free ones and waits
poll a condition against a deadline, with the integration tests' own harness
(``tests/deployment_harness.py``). Usage::

    python bench/round_overhead.py [--rounds N] [--nodes K] [--model tiny|minilm] [--examples N]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from workspace import workspace

from residency.client.daemon import NodeDir, daemon_env, supernode_command
from residency.common.privacy.signing import load_public, public_path
from residency.server.results import NodeStatus, Results, RunStatus

# The tests' deployment harness starts, polls and stops this bench's processes too, so that code
# exists once: tests/ joins bench/ on the import path (here only; pytest has it on its own).
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
import deployment_harness as harness

BIN = Path(sys.executable).parent
COUNTRIES = ("DE", "FR", "ES", "IT", "NL", "PL", "PT", "SE", "AT", "BE", "DK", "FI")
WORDS = {
    "pos": ["good", "great", "fine", "happy", "nice", "lovely"],
    "neg": ["bad", "awful", "terrible", "sad", "poor", "ugly"],
    "obj": ["table", "chair", "window", "door", "wall", "floor"],
}
TARGET_EPSILON = 4.0
NODE_BUDGET_EPSILON = 10.0  # room for both deployment runs, should budgets outlive a run
DELTA = 1e-4
MODES = {
    "simulation": "simulation (Ray)",
    "fork": "deployment, fork executor",
    "stock": "deployment, stock subprocess",
}


class BenchFailed(RuntimeError):
    """A step of the bench did not work; the message says which and where its log is."""


@dataclass(frozen=True)
class RoundTiming:
    """One round as ``results.json`` reports it: its wall time on the coordinator."""

    round: int
    wall_s: float


@dataclass(frozen=True)
class ModeTiming:
    """A whole run in one mode: its rounds and the launcher's own wall time."""

    mode: str
    rounds: list[RoundTiming]
    command_s: float
    load: tuple[float, float] = (0.0, 0.0)


# ---------------------------------------------------------------- job and data


def _rows(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    labels = list(WORDS)
    rows = []
    for i in range(count):
        label = labels[i % len(labels)]
        rows.append((" ".join(rng.choices(WORDS[label], k=5)), label))
    return rows


def _write_csv(path: Path, rows: Sequence[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def write_job(
    folder: Path, *, countries: Sequence[str], examples: int, rounds: int, model: str
) -> Path:
    """A LoRA job over small separable per-country files, with a global test file."""
    folder.mkdir(parents=True, exist_ok=True)
    nodes = []
    for index, country in enumerate(countries):
        _write_csv(folder / f"{country.lower()}.csv", _rows(examples, index))
        nodes.append(f'[[nodes]]\ncountry = "{country}"\ndata = "{country.lower()}.csv"\n')
    _write_csv(folder / "test.csv", _rows(60, 99))
    job = folder / "job.toml"
    job.write_text(
        f"""name = "round-overhead"

[model]
path = "{model}"
max_length = {16 if model == "tiny" else 32}

[data]
labels = {json.dumps(list(WORDS))}
test = "test.csv"

[train]
update = "lora"
rounds = {rounds}
local_epochs = 2
batch_size = 16
learning_rate = 0.1

[privacy]
target_epsilon = {TARGET_EPSILON}
delta = {DELTA}

"""
        + "\n".join(nodes),
        encoding="utf-8",
    )
    return job


# ---------------------------------------------------------------- processes


def check_alive(daemon: harness.Daemon) -> None:
    """Fail with the end of its log if it has exited."""
    code = daemon.process.poll()
    if code is not None:
        raise BenchFailed(f"{daemon.name} exited ({code}): {_tail(daemon.log)} (log: {daemon.log})")


@dataclass
class Processes:
    """Everything started in the background, stopped newest first."""

    daemons: list[harness.Daemon] = field(default_factory=list)

    def start(
        self, name: str, command: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> harness.Daemon:
        """Start ``command`` with its output in ``log``."""
        daemon = harness.spawn(name, command, log, env=env)
        self.daemons.append(daemon)
        return daemon

    def stop(self, daemons: Sequence[harness.Daemon]) -> None:
        """Stop these daemons (newest first) and forget them; kill one that ignores SIGINT."""
        for daemon in reversed(daemons):
            try:
                daemon.stop()
            except AssertionError as ignored:  # the harness killed it
                print(f"warning: {ignored}; killed")
            self.daemons.remove(daemon)

    def stop_all(self) -> None:
        """Stop everything still running."""
        self.stop(list(self.daemons))


def _tail(path: Path) -> str:
    lines = [line for line in path.read_text("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def residency(*args: str, log: Path, timeout_s: float = 300) -> None:
    """Run one ``residency`` command to completion; its output goes to ``log``."""
    with log.open("wb") as handle:
        done = subprocess.run(
            [harness.RESIDENCY, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
    if done.returncode != 0:
        raise BenchFailed(
            f"residency {' '.join(args[:2])} exited ({done.returncode}): {_tail(log)} (log: {log})"
        )


def wait_until(
    check: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    watch: Sequence[harness.Daemon] = (),
) -> None:
    """Poll ``check`` until true; fail naming ``what`` at the deadline or if one dies."""

    def ready() -> bool:
        for daemon in watch:
            check_alive(daemon)
        return check()

    try:
        harness.wait_until(ready, timeout_s=timeout_s, what=what)
    except AssertionError as late:
        raise BenchFailed(str(late)) from None


# ---------------------------------------------------------------- the federation


def node_threads(nodes: int) -> int:
    """Torch threads per node process when ``nodes`` nodes share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // nodes)


@dataclass(kw_only=True)
class Federation(harness.Federation):
    """The harness's coordinator folder under ``root``, and one node folder per country.

    This bench starts its own nodes (cores shared out, logs kept, all in ``processes``).
    """

    countries: Sequence[str]
    processes: Processes

    def node_env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with this machine's cores shared out between the nodes."""
        return {**base, "OMP_NUM_THREADS": str(node_threads(len(self.countries)))}

    def node_dir(self, country: str) -> Path:
        """A country's node folder."""
        return self.root / f"node-{country}"

    def logs(self, name: str) -> Path:
        """A log file for one command."""
        folder = self.root / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def set_up(self, data: Path) -> harness.Daemon:
        """Init and start the coordinator, init the nodes and admit their keys."""
        residency(
            *("coordinator", "init", str(self.coordinator_dir), "--san", "127.0.0.1"),
            *("--host", "127.0.0.1", "--port", str(self.port)),
            log=self.logs("coordinator-init.log"),
        )
        # a launched job reads its test set only from the coordinator's data folder
        (self.coordinator_dir / "data").mkdir(exist_ok=True)
        shutil.copy(data / "test.csv", self.coordinator_dir / "data" / "test.csv")
        coordinator = self.processes.start(
            "coordinator",
            [harness.RESIDENCY, "coordinator", "start", str(self.coordinator_dir)],
            self.logs("coordinator.out"),
        )
        inits = [
            self.processes.start(
                f"node init {country}",
                [
                    *(harness.RESIDENCY, "node", "init", str(self.node_dir(country))),
                    *("--country", country, "--data", str(data / f"{country.lower()}.csv")),
                    *("--labels", ",".join(WORDS)),
                    *("--budget-epsilon", str(NODE_BUDGET_EPSILON), "--delta", str(DELTA)),
                    *("--runtime-port", str(harness.free_port())),
                    *("--trust-launcher", load_public(public_path(self.launcher_key))),
                ],
                self.logs(f"node-init-{country}.log"),
            )
            for country in self.countries
        ]
        wait_until(
            lambda: all(d.process.poll() is not None for d in inits),
            timeout_s=120,
            what="node init",
        )
        for daemon in inits:
            if daemon.process.returncode != 0:
                raise BenchFailed(f"{daemon.name} failed: {_tail(daemon.log)} (log: {daemon.log})")
        self.processes.stop(inits)
        wait_until(
            lambda: harness.port_open(self.host, self.port),
            timeout_s=60,
            what="the coordinator's port",
            watch=[coordinator],
        )
        for country in self.countries:
            residency(
                *("coordinator", "admit", str(self.node_dir(country) / "keys" / "node.pub")),
                *("--country", country, "--dir", str(self.coordinator_dir)),
                log=self.logs(f"admit-{country}.log"),
            )
        return coordinator

    def online(self) -> set[str]:
        """Countries whose node the coordinator sees online right now."""
        done = harness.cli("coordinator", "nodes", "--json", "--dir", str(self.coordinator_dir))
        if done.returncode != 0:
            return set()
        return {str(row["country"]) for row in json.loads(done.stdout) if row["status"] == "online"}

    def start_residency_nodes(self) -> list[harness.Daemon]:
        """``residency node start``: SuperNode plus the warm fork executor."""
        return [
            self.processes.start(
                f"node {country}",
                [
                    *(harness.RESIDENCY, "node", "start", str(self.node_dir(country))),
                    *("--coordinator", self.address, "--ca", str(self.ca)),
                ],
                self.logs(f"node-{country}-fork.out"),
                self.node_env(dict(os.environ)),
            )
            for country in self.countries
        ]

    def start_stock_supernodes(self) -> list[harness.Daemon]:
        """The same SuperNode command, but Flower runs a ``flwr-clientapp`` per message."""
        env = self.node_env(
            {**daemon_env(), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        )
        daemons = []
        for country in self.countries:
            folder = NodeDir(self.node_dir(country))
            command = supernode_command(
                folder, folder.load(), coordinator=self.address, ca=self.ca, insecure=False
            )
            flag = command.index("--isolation")
            command[flag + 1] = "subprocess"
            daemons.append(
                self.processes.start(
                    f"stock supernode {country}",
                    command,
                    self.logs(f"node-{country}-stock.out"),
                    env,
                )
            )
        return daemons


# ---------------------------------------------------------------- measuring


def read_timings(
    mode: str, results_file: Path, command: tuple[float, tuple[float, float]]
) -> ModeTiming:
    """Each round's wall time on the coordinator, from ``results.json``; every node trained."""
    results = Results.model_validate_json(results_file.read_text("utf-8"))
    if results.status is not RunStatus.COMPLETED:
        raise BenchFailed(f"{MODES[mode]}: run {results.status}: {results.error}")
    rounds = []
    for result in results.rounds:
        if not result.nodes or any(n.status is not NodeStatus.OK for n in result.nodes):
            raise BenchFailed(f"{MODES[mode]}: round {result.round}: a node did not train")
        rounds.append(RoundTiming(result.round, result.seconds))
    return ModeTiming(mode, rounds, *command)


def timed_residency(*args: str, log: Path, timeout_s: float) -> tuple[float, tuple[float, float]]:
    """Run a ``residency`` command; return its wall time and the 1-min load before and after."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    residency(*args, log=log, timeout_s=timeout_s)
    return time.perf_counter() - started, (load_before, os.getloadavg()[0])


def run_simulation(root: Path, job: Path, timeout_s: float) -> ModeTiming:
    """``residency simulate``."""
    out = root / "out-simulation"
    command = timed_residency(
        "simulate", str(job), "--output", str(out), log=root / "simulate.out", timeout_s=timeout_s
    )
    return read_timings("simulation", out / "results.json", command)


def run_deployment(
    mode: str, federation: Federation, job: Path, nodes: list[harness.Daemon], timeout_s: float
) -> ModeTiming:
    """Wait for ``nodes`` to be online, run the job, stop the nodes and see them go offline."""
    countries = set(federation.countries)
    try:
        wait_until(
            lambda: countries <= federation.online(),
            timeout_s=180,
            what=f"{MODES[mode]}: nodes online",
            watch=nodes,
        )
        out = federation.root / f"out-{mode}"
        command = timed_residency(
            *("run", str(job), "--coordinator", federation.address, "--ca", str(federation.ca)),
            *("--key", str(federation.launcher_key), "--output", str(out)),
            log=federation.logs(f"run-{mode}.out"),
            timeout_s=timeout_s,
        )
    finally:
        federation.processes.stop(nodes)
    wait_until(
        lambda: not countries & federation.online(),
        timeout_s=120,
        what=f"{MODES[mode]}: nodes offline",
    )
    return read_timings(mode, out / "results.json", command)


# ---------------------------------------------------------------- report


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def report(timings: Sequence[ModeTiming]) -> str:
    """The per-round table, then one summary line per mode."""
    simulated = {r.round: r.wall_s for t in timings if t.mode == "simulation" for r in t.rounds}

    def excess(timing: ModeTiming, r: RoundTiming) -> float | None:
        """Seconds beyond the same round in simulation (``None`` for simulation itself)."""
        if timing.mode == "simulation" or r.round not in simulated:
            return None
        return r.wall_s - simulated[r.round]

    header = f"{'mode':<30} {'round':>5} {'round s':>8} {'over simulation s':>18}"
    lines = [header, "-" * len(header)]
    for timing in timings:
        for r in timing.rounds:
            lines.append(
                f"{MODES[timing.mode]:<30} {r.round:>5} {r.wall_s:>8.2f} "
                f"{_fmt(excess(timing, r), '.2f'):>18}"
            )
    lines.append("")
    steady: dict[str, float | None] = {}
    for timing in timings:
        first, rest = timing.rounds[0], timing.rounds[1:]
        steady[timing.mode] = _mean([r.wall_s for r in rest])
        extra = [e for e in (excess(timing, r) for r in rest) if e is not None]
        later = f"rounds 2-{len(timing.rounds)}" if len(rest) > 1 else "round 2"
        steady_text = (
            f"{later} mean {_fmt(steady[timing.mode], '.2f')} s/round"
            + ("" if not extra else f", {_fmt(_mean(extra), '.2f')} s over simulation")
            if rest
            else "no round after the first (pass --rounds 2 or more)"
        )
        first_extra = excess(timing, first)
        lines.append(
            f"{MODES[timing.mode]}: {steady_text}; round 1 (warm-up) {first.wall_s:.2f} s"
            + ("" if first_extra is None else f", {first_extra:.2f} s over simulation")
            + f"; command {timing.command_s:.1f} s, "
            f"load {timing.load[0]:.1f} -> {timing.load[1]:.1f}"
        )
    fork, stock = steady.get("fork"), steady.get("stock")
    if fork is not None and stock is not None:
        lines.append(
            f"fork executor saves {stock - fork:.2f} s per round over stock Flower "
            "(steady-state round time difference)"
        )
    cores = os.cpu_count() or 1
    busiest = max(max(t.load) for t in timings)
    if busiest > cores:
        lines.append(
            f"warning: 1-min load average reached {busiest:.1f} on {cores} cores; if other "
            "processes were running, these times are inflated: rerun on an idle machine"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="federated rounds (default 4)")
    parser.add_argument("--nodes", type=int, default=2, help="countries (default 2)")
    parser.add_argument("--model", choices=("tiny", "minilm"), default="tiny")
    parser.add_argument("--examples", type=int, default=200, help="training rows per node")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, runs)")
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= len(COUNTRIES):
        parser.error(f"--nodes: between 1 and {len(COUNTRIES)}")
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    if args.examples < 20:
        parser.error("--examples: at least 20")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    countries = COUNTRIES[: args.nodes]
    timeout_s = 300.0 + 300.0 * args.rounds
    started = time.perf_counter()
    timings: list[ModeTiming] = []
    with workspace(args.keep) as root:
        job = write_job(
            root / "job",
            countries=countries,
            examples=args.examples,
            rounds=args.rounds,
            model=args.model,
        )
        print(
            f"{args.nodes} nodes ({', '.join(countries)}), {args.rounds} rounds, "
            f"model {args.model}, {args.examples} examples per node, "
            f"{node_threads(args.nodes)} torch thread(s) per deployed node; work folder {root}",
            flush=True,
        )
        print(f"[{time.perf_counter() - started:6.1f} s] {MODES['simulation']}", flush=True)
        timings.append(run_simulation(root, job, timeout_s))
        processes = Processes()
        try:
            federation = Federation(root / "federation", countries=countries, processes=processes)
            print(f"[{time.perf_counter() - started:6.1f} s] coordinator and nodes", flush=True)
            federation.set_up(job.parent)
            for mode, start_nodes in (
                ("fork", federation.start_residency_nodes),
                ("stock", federation.start_stock_supernodes),
            ):
                print(f"[{time.perf_counter() - started:6.1f} s] {MODES[mode]}", flush=True)
                timings.append(run_deployment(mode, federation, job, start_nodes(), timeout_s))
        finally:
            processes.stop_all()
    print()
    print(report(timings))
    print(f"\nbench took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
