"""Scale: what a simulated federation costs as the number of countries grows, measured.

One small job (the tiny BERT, DP-SGD on the classifier head, one full-batch step per round,
a few rows per country) runs through ``residency simulate`` once per federation size, one
after another in this run. Per run it measures the command's wall time, each round's wall
time on the coordinator (``rounds[].seconds`` in ``results.json``), the bytes every round
moved (``rounds[].bytes_up`` / ``bytes_down``), and the peak memory of the whole process tree:
the ``simulate`` process and every descendant (Ray's GCS server, raylet, agents and the
ClientApp actors that play the nodes), sampled with psutil and summed, as RSS (shared pages
counted once per process: an upper bound) and as PSS (shared pages split between their users).
Ratios are to the smallest federation of the same run. A run that fails, or a peak RSS above
``--max-memory-gib``, ends the bench with exit status 1. Usage::

    python bench/scale.py [--countries 10,20,50] [--rounds 3] [--examples 30] [--keep]
    python bench/scale.py --cores 8      # memory as on an 8-core machine (8 Ray actors)
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from workspace import workspace

from residency.server.results import NodeStatus, Results, RunStatus

RESIDENCY = str(Path(sys.executable).parent / "residency")
# Distinct ISO 3166-1 alpha-2 codes: the EU, then the rest of Europe, then further afield.
CODES = (
    "AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK "
    "IS LI NO CH GB AL BA ME MK RS TR UA MD GE AM AZ AD MC SM "
    "US CA MX BR AR CL JP KR AU NZ IN SG ZA IL MA TN EG KE NG"
)
COUNTRIES = tuple(CODES.split())
WORDS = {
    "pos": ["good", "great", "fine", "happy", "nice", "lovely"],
    "neg": ["bad", "awful", "terrible", "sad", "poor", "ugly"],
    "obj": ["table", "chair", "window", "door", "wall", "floor"],
}
TARGET_EPSILON = 8.0
DELTA = 1e-4
MIB = 2**20
GIB = 2**30


class BenchFailed(RuntimeError):
    """A run did not work or broke the memory limit; the message says which and where."""


@dataclass(frozen=True)
class Peak:
    """The largest summed memory of a process tree seen while it ran."""

    rss: int
    pss: int
    processes: int


@dataclass(frozen=True)
class Measured:
    """One federation size: the command, its rounds, its bytes and its peak memory."""

    countries: int
    rounds: int
    wall_s: float
    round_s: list[float]
    bytes_up: list[int]
    bytes_down: list[int]
    peak: Peak
    load: tuple[float, float]

    @property
    def start_s(self) -> float:
        """Everything outside the rounds: start-up, Ray, keys, the baseline score, shut-down."""
        return self.wall_s - sum(self.round_s)

    @property
    def steady_s(self) -> float:
        """Mean round time after round 1 (round 1 also loads the model on every actor)."""
        later = self.round_s[1:] or self.round_s
        return sum(later) / len(later)

    @property
    def up_per_round(self) -> float:
        """Mean bytes received from all nodes per round."""
        return sum(self.bytes_up) / len(self.bytes_up)

    @property
    def down_per_round(self) -> float:
        """Mean bytes sent to all nodes per round."""
        return sum(self.bytes_down) / len(self.bytes_down)


# ---------------------------------------------------------------- job and data


def _write_rows(path: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    labels = list(WORDS)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(count):
            label = labels[i % len(labels)]
            writer.writerow([" ".join(rng.choices(WORDS[label], k=5)), label])


def write_job(
    folder: Path,
    *,
    countries: Sequence[str],
    examples: int,
    rounds: int,
    update: str,
    model: str,
) -> Path:
    """A job over small separable per-country files: one full-batch DP-SGD step a round."""
    folder.mkdir(parents=True, exist_ok=True)
    nodes = []
    for index, country in enumerate(countries):
        _write_rows(folder / f"{country.lower()}.csv", examples, index)
        nodes.append(f'[[nodes]]\ncountry = "{country}"\ndata = "{country.lower()}.csv"\n')
    _write_rows(folder / "test.csv", 60, 99)
    job = folder / "job.toml"
    job.write_text(
        f"""name = "scale-{len(countries)}"

[model]
path = "{model}"
max_length = 16

[data]
labels = {json.dumps(list(WORDS))}
test = "test.csv"

[train]
update = "{update}"
rounds = {rounds}
local_epochs = 1
batch_size = {examples}

[privacy]
target_epsilon = {TARGET_EPSILON}
delta = {DELTA}

"""
        + "\n".join(nodes),
        encoding="utf-8",
    )
    return job


# ---------------------------------------------------------------- measuring


class TreeMemory:
    """Samples the summed RSS and PSS of a process and all its descendants on a thread."""

    def __init__(self, pid: int, interval_s: float) -> None:
        self._root = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)
        self.rss = self.pss = self.processes = 0

    def tree(self) -> list[psutil.Process]:
        """The root and its descendants now (empty once the root has gone)."""
        try:
            return [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> int:
        """Add one sample to the peaks; returns this sample's summed RSS."""
        rss = pss = count = 0
        for process in self.tree():
            try:
                memory = process.memory_full_info()
            except psutil.Error:  # exited between listing and reading, or a zombie
                continue
            rss += memory.rss
            pss += memory.pss
            count += 1
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
        self.processes = max(self.processes, count)
        return rss

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def __enter__(self) -> TreeMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> Peak:
        """The peaks so far."""
        return Peak(self.rss, self.pss, self.processes)


def _tail(path: Path, lines: int = 5) -> str:
    text = [line for line in path.read_text("utf-8", "replace").splitlines() if line.strip()]
    return "\n".join(text[-lines:]) if text else "no output"


def _stop_tree(process: subprocess.Popen[bytes], memory: TreeMemory) -> None:
    """SIGINT to ``simulate``, then kill it and what is left of its tree, each by its PID.

    ``simulate`` stops Ray on SIGINT but can then wait for its round's replies until
    ``round_timeout_s``, so it gets 30 s.
    """
    leftovers = memory.tree()
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in leftovers[1:]:
        with suppress(psutil.Error):  # gone with its parent
            child.kill()


def simulate_command(job: Path, out: Path, cores: int | None) -> list[str]:
    """``residency simulate``; with ``cores``, the same CLI told the machine has that many.

    Ray runs one ClientApp actor per core (``backend_config`` in ``cli/simulation.py``), so
    the core count, not the number of countries, sets how many copies of the model are held.
    """
    args = ["simulate", str(job), "--output", str(out)]
    if cores is None:
        return [RESIDENCY, *args]
    pretend = (
        f"import os; os.cpu_count = lambda: {cores}; from residency.cli.main import main; main()"
    )
    return [sys.executable, "-c", pretend, *args]


def _exited(process: subprocess.Popen[bytes], wait_s: float) -> bool:
    try:
        process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def simulate(
    command: list[str],
    *,
    name: str,
    log: Path,
    timeout_s: float,
    max_rss: int,
    interval_s: float,
) -> tuple[float, Peak, tuple[float, float]]:
    """Run ``command``; return its wall time, peak tree memory and the load before and after."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "120"},
        )
    with TreeMemory(process.pid, interval_s) as memory:
        while not _exited(process, interval_s):
            if memory.rss > max_rss:
                _stop_tree(process, memory)
                raise BenchFailed(
                    f"{name}: process tree RSS reached {memory.rss / GIB:.2f} GiB, "
                    f"over the {max_rss / GIB:g} GiB limit; stopped (log: {log})"
                )
            if time.perf_counter() - started > timeout_s:
                _stop_tree(process, memory)
                raise BenchFailed(f"{name}: no result after {timeout_s:g} s (log: {log})")
    wall_s = time.perf_counter() - started
    if process.returncode != 0:
        raise BenchFailed(
            f"{name}: simulate exited ({process.returncode}) (log: {log}):\n{_tail(log)}"
        )
    return wall_s, memory.peak, (load_before, os.getloadavg()[0])


def measure(
    root: Path, args: argparse.Namespace, countries: int, max_rss: int, timeout_s: float
) -> Measured:
    """One federation of ``countries``: run it and read what it reported."""
    folder = root / f"{countries}-countries"
    job = write_job(
        folder / "job",
        countries=COUNTRIES[:countries],
        examples=args.examples,
        rounds=args.rounds,
        update=args.update,
        model=args.model,
    )
    out = folder / "out"
    wall_s, peak, load = simulate(
        simulate_command(job, out, args.cores),
        name=f"{countries} countries",
        log=folder / "simulate.out",
        timeout_s=timeout_s,
        max_rss=max_rss,
        interval_s=args.interval_s,
    )
    results = Results.model_validate_json((out / "results.json").read_text("utf-8"))
    if results.status is not RunStatus.COMPLETED:
        raise BenchFailed(f"{countries} countries: run {results.status}: {results.error}")
    if len(results.rounds) != args.rounds:
        raise BenchFailed(f"{countries} countries: {len(results.rounds)} of {args.rounds} rounds")
    for result in results.rounds:
        ok = sorted(n.country for n in result.nodes if n.status is NodeStatus.OK)
        if ok != sorted(COUNTRIES[:countries]):
            raise BenchFailed(
                f"{countries} countries: round {result.round}: {len(ok)} nodes trained"
            )
    over = [c for c, spent in results.privacy.items() if (spent.epsilon or 0) > TARGET_EPSILON]
    if over:
        raise BenchFailed(f"{countries} countries: epsilon above target for {over}")
    return Measured(
        countries=countries,
        rounds=args.rounds,
        wall_s=wall_s,
        round_s=[r.seconds for r in results.rounds],
        bytes_up=[r.bytes_up for r in results.rounds],
        bytes_down=[r.bytes_down for r in results.rounds],
        peak=peak,
        load=load,
    )


# ---------------------------------------------------------------- report


def report(rows: Sequence[Measured], max_rss: int) -> str:
    """The table, then ratios to the smallest federation and the cost of each added country."""
    header = (
        f"{'countries':>9} {'wall s':>7} {'wall/round s':>12} {'start s':>7} {'round 1 s':>9} "
        f"{'round s':>7} {'round s/country':>15} {'peak RSS MiB':>12} {'peak PSS MiB':>12} "
        f"{'procs':>5} {'up KB/round':>11} {'down KB/round':>13}"
    )
    lines = [header, "-" * len(header)]
    for m in rows:
        lines.append(
            f"{m.countries:>9} {m.wall_s:>7.1f} {m.wall_s / m.rounds:>12.2f} {m.start_s:>7.1f} "
            f"{m.round_s[0]:>9.2f} {m.steady_s:>7.2f} {m.steady_s / m.countries:>15.3f} "
            f"{m.peak.rss / MIB:>12.0f} {m.peak.pss / MIB:>12.0f} {m.peak.processes:>5} "
            f"{m.up_per_round / 1e3:>11.1f} {m.down_per_round / 1e3:>13.1f}"
        )
    later = "rounds 2.." if rows[0].rounds > 1 else "round 1"
    lines += [
        "",
        f"round s: mean over {later}; start s: wall minus every round (start-up, Ray, keys, "
        "baseline score, model export, shut-down); peak: summed over the simulate process "
        "and all its descendants",
    ]
    base = rows[0]
    if len(rows) > 1:
        lines.append("")
        lines.append(f"relative to {base.countries} countries:")
        for m in rows[1:]:
            lines.append(
                f"  {m.countries} countries (x{m.countries / base.countries:.1f}): "
                f"wall x{m.wall_s / base.wall_s:.2f}, round x{m.steady_s / base.steady_s:.2f}, "
                f"peak RSS x{m.peak.rss / base.peak.rss:.2f}, "
                f"peak PSS x{m.peak.pss / base.peak.pss:.2f}, "
                f"bytes/round x{m.up_per_round / base.up_per_round:.2f} up, "
                f"x{m.down_per_round / base.down_per_round:.2f} down"
            )
        lines.append("each added country, between consecutive sizes:")
        for before, after in itertools.pairwise(rows):
            added = after.countries - before.countries
            lines.append(
                f"  {before.countries} -> {after.countries}: "
                f"+{(after.steady_s - before.steady_s) / added:.3f} s per round, "
                f"{(after.wall_s - before.wall_s) / added:+.2f} s of wall for the run, "
                f"{(after.peak.rss - before.peak.rss) / added / MIB:+.1f} MiB RSS, "
                f"{(after.peak.pss - before.peak.pss) / added / MIB:+.1f} MiB PSS, "
                f"+{(after.up_per_round - before.up_per_round) / added / 1e3:.2f} KB up "
                "per round"
            )
    largest = max(rows, key=lambda m: m.countries)
    verdict = "met" if largest.peak.rss <= max_rss else "MISSED"
    lines.append(
        f"peak RSS at {largest.countries} countries {largest.peak.rss / GIB:.2f} GiB, "
        f"limit {max_rss / GIB:g} GiB: {verdict}"
    )
    cores = os.cpu_count() or 1
    busiest = max(max(m.load) for m in rows)
    if busiest > cores:
        lines.append(
            f"warning: 1-min load average reached {busiest:.1f} on {cores} cores; if other "
            "processes were running, these times are inflated: rerun on an idle machine"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from exc
    if not sizes or sizes[0] < 1 or sizes[-1] > len(COUNTRIES):
        raise argparse.ArgumentTypeError(f"each size must be 1 to {len(COUNTRIES)}: {text!r}")
    return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--countries", type=_sizes, default=[10, 20, 50], help="sizes (default 10,20,50)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (default 3)")
    parser.add_argument("--examples", type=int, default=30, help="rows per country (default 30)")
    parser.add_argument(
        "--update",
        default="head",
        choices=("head", "lora", "lora-fa", "full"),
        help="what nodes train (default head: the cheapest round)",
    )
    parser.add_argument("--model", default="tiny", help="tiny (default), minilm or a checkpoint")
    parser.add_argument(
        "--max-memory-gib",
        type=float,
        default=24.0,
        help="fail if a run's process tree RSS goes above this (default 24)",
    )
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per run (default 3600)")
    parser.add_argument(
        "--interval-s", type=float, default=0.2, help="memory sampling period (default 0.2)"
    )
    parser.add_argument(
        "--cores",
        type=int,
        help="tell simulate the machine has this many cores (Ray then runs as many ClientApp "
        "actors, each holding a model): shows memory on a larger machine; times are not",
    )
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.examples < 3 or (args.cores is not None and args.cores < 1):
        parser.error("--rounds and --cores must be at least 1, --examples at least 3")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    max_rss = int(args.max_memory_gib * GIB)
    started = time.perf_counter()
    rows: list[Measured] = []
    failure: BenchFailed | None = None
    with workspace(args.keep, prefix="residency-scale-") as root:
        print(
            f"{', '.join(map(str, args.countries))} countries, {args.rounds} rounds, "
            f"model {args.model}, update {args.update}, {args.examples} rows per country, "
            f"{os.cpu_count()} cores"
            + ("" if args.cores is None else f", simulate told {args.cores}")
            + f"; work folder {root}",
            flush=True,
        )
        for countries in args.countries:
            print(f"[{time.perf_counter() - started:6.1f} s] {countries} countries", flush=True)
            try:
                rows.append(measure(root, args, countries, max_rss, args.timeout_s))
            except BenchFailed as exc:
                failure = exc
                break
        if rows:
            print()
            print(report(rows, max_rss))
        if args.json is not None:
            payload = [{**asdict(m), "start_s": m.start_s, "steady_s": m.steady_s} for m in rows]
            args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        print(f"\nbench took {time.perf_counter() - started:.0f} s")
        if failure is not None:
            raise failure  # keeps the work folder: its logs say why
        over = [m.countries for m in rows if m.peak.rss > max_rss]
        if over:
            raise BenchFailed(
                f"process tree RSS above {args.max_memory_gib:g} GiB at {over} countries"
            )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
