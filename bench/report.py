"""Run every benchmark, one after another on this machine, and join their output in one report.

Each benchmark measures its own ratios within its own run; this only runs them in sequence (so
none competes with another for the cores), shows their output live, and writes one Markdown
file with the machine, the versions, every command line, its wall time and its full output.
A benchmark that fails is reported as failed, with its output, and the others still run.
Usage::

    python bench/report.py [--out bench-report.md] [--quick] [--only NAME ...]

``--quick`` runs each on the tiny model with few steps, to check the report end to end in
minutes; its numbers say nothing about performance.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from residency.common.files import write_atomic

BENCH = Path(__file__).resolve().parent

FULL: dict[str, list[str]] = {
    "throughput": ["throughput.py"],
    "bytes": ["bytes.py"],
    "round_overhead": ["round_overhead.py"],
    "accuracy": ["accuracy.py"],
}
QUICK: dict[str, list[str]] = {
    "throughput": ["throughput.py", "--model", "tiny", "--steps", "2", "--warmup", "1"],
    "bytes": ["bytes.py", "--model", "tiny", "--examples", "16"],
    "round_overhead": ["round_overhead.py", "--rounds", "2", "--examples", "40"],
    "accuracy": [
        "accuracy.py",
        "--model",
        "tiny",
        "--examples",
        "40",
        "--test",
        "30",
        "--epsilons",
        "8",
        "--repeats",
        "1",
        "--regimes",
        "federated,central",
    ],
}


@dataclass(frozen=True)
class Ran:
    """One benchmark's run: its command, exit status, wall time and output."""

    name: str
    command: list[str]
    returncode: int
    seconds: float
    output: str


def _run(name: str, args: list[str]) -> Ran:
    command = [sys.executable, str(BENCH / args[0]), *args[1:]]
    print(f"== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    return Ran(name, command, process.returncode, time.perf_counter() - started, "".join(lines))


def _machine() -> list[str]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, GPU: {gpu}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, "
        f"flwr {version('flwr')}, opacus {version('opacus')}, "
        f"transformers {version('transformers')}, peft {version('peft')}",
        f"- started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
    ]


def _markdown(runs: list[Ran], quick: bool, machine: list[str]) -> str:
    parts = ["# Residency benchmark report", ""]
    if quick:
        parts += ["**Quick mode: tiny model, few steps; the numbers mean nothing.**", ""]
    parts += [*machine, ""]
    parts += ["| benchmark | status | wall time |", "| --- | --- | ---: |"]
    parts += [
        f"| {r.name} | {'ok' if r.returncode == 0 else f'FAILED ({r.returncode})'} "
        f"| {r.seconds:.0f} s |"
        for r in runs
    ]
    for r in runs:
        parts += ["", f"## {r.name}", "", f"`{' '.join(r.command)}`", "", "```text"]
        parts += [r.output.rstrip("\n"), "```"]
    return "\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-report.md"))
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps")
    parser.add_argument("--only", nargs="+", choices=sorted(FULL), help="run only these")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    machine = _machine()
    runs = [_run(name, plan[name]) for name in plan if not args.only or name in args.only]
    write_atomic(args.out, _markdown(runs, args.quick, machine))  # never half written
    failed = [r.name for r in runs if r.returncode != 0]
    print(f"report written to {args.out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
