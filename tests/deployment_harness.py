"""Start real coordinators and nodes through the ``residency`` CLI, as an operator would.

Every process is started here and ended here by its own PID (SIGINT first, as the daemons
expect); ports are free ones; waits poll a condition against a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

RESIDENCY = str(Path(sys.executable).parent / "residency")


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll ``check`` until true; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)


def cli(
    *args: str, timeout_s: float = 120, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run one ``residency`` command to completion."""
    return subprocess.run(
        [*prefix, RESIDENCY, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env={**os.environ, "COLUMNS": "250"},  # no line wrapping in what tests read
    )


@dataclass
class Daemon:
    """A long-running ``residency ... start`` process."""

    name: str
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        """What it printed so far."""
        return self.log.read_text("utf-8", "replace") if self.log.exists() else ""

    def stop(self, timeout_s: float = 60, sig: signal.Signals = signal.SIGINT) -> int:
        """SIGINT (or ``sig``), then wait; kill only if it ignores the signal."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"{self.name} ignored SIGINT for {timeout_s:g} s") from None
        return int(self.process.returncode)


def start(name: str, args: Sequence[str], log: Path, prefix: Sequence[str] = ()) -> Daemon:
    """Start ``residency ARGS`` in the background, output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("w", encoding="utf-8")
    process = subprocess.Popen(
        [*prefix, RESIDENCY, *args], stdout=handle, stderr=subprocess.STDOUT, text=True
    )
    handle.close()
    return Daemon(name, process, log)


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (to prove nothing was left behind)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(proc.name))
    return found


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections there."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Federation:
    """A coordinator folder plus node folders under one temp folder."""

    root: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def coordinator_dir(self) -> Path:
        return self.root / "coordinator"

    @property
    def ca(self) -> Path:
        return self.coordinator_dir / "tls" / "ca.pem"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def init_coordinator(self, *sans: str) -> None:
        done = cli(
            "coordinator",
            "init",
            str(self.coordinator_dir),
            *[f"--san={s}" for s in sans or (self.host,)],
            "--host",
            self.host,
            "--port",
            str(self.port),
        )
        assert done.returncode == 0, done.stderr

    def start_coordinator(self, *flags: str, prefix: Sequence[str] = ()) -> Daemon:
        daemon = start(
            "coordinator",
            ["coordinator", "start", str(self.coordinator_dir), *flags],
            self.root / "coordinator.out",
            prefix,
        )
        self.daemons.append(daemon)
        wait_until(
            lambda: port_open(self.host, self.port) or daemon.process.poll() is not None,
            timeout_s=60,
            what="the coordinator's port",
        )
        assert daemon.process.poll() is None, daemon.output()
        return daemon

    def init_node(
        self, country: str, data: Path, *, budget: float = 8.0, delta: float = 1e-4
    ) -> Path:
        folder = self.root / f"node-{country}"
        done = cli(
            "node",
            "init",
            str(folder),
            "--country",
            country,
            "--data",
            str(data),
            "--budget-epsilon",
            str(budget),
            "--delta",
            str(delta),
            "--runtime-port",
            str(free_port()),
        )
        assert done.returncode == 0, done.stderr
        return folder

    def admit(self, node_dir: Path, country: str) -> None:
        done = cli(
            "coordinator",
            "admit",
            str(node_dir / "keys" / "node.pub"),
            "--country",
            country,
            "--dir",
            str(self.coordinator_dir),
        )
        assert done.returncode == 0, done.stderr + done.stdout

    def start_node(
        self,
        node_dir: Path,
        *flags: str,
        ca: Path | None = None,
        prefix: Sequence[str] = (),
        address: str | None = None,
    ) -> Daemon:
        args = ["node", "start", str(node_dir), "--coordinator", address or self.address, *flags]
        if "--insecure" not in flags:
            args += ["--ca", str(ca or self.ca)]
        daemon = start(
            f"node {node_dir.name}", args, node_dir.parent / f"{node_dir.name}.out", prefix
        )
        self.daemons.append(daemon)
        return daemon

    def nodes(self) -> list[dict[str, object]]:
        done = cli("coordinator", "nodes", "--json", "--dir", str(self.coordinator_dir))
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, object]] = json.loads(done.stdout)
        return rows

    def wait_online(self, countries: Sequence[str], timeout_s: float = 90) -> None:
        def online() -> bool:
            up = {row["country"] for row in self.nodes() if row["status"] == "online"}
            return set(countries) <= up

        wait_until(online, timeout_s=timeout_s, what=f"nodes {', '.join(countries)} online")

    def stop_all(self) -> dict[str, int]:
        """Nodes first, then the coordinator; every exit code by name."""
        codes = {}
        for daemon in reversed(self.daemons):
            codes[daemon.name] = daemon.stop()
        return codes

    def leftovers(self) -> list[int]:
        """Processes still running for this federation's folders or node executors."""
        found = set(processes_mentioning(str(self.root)))
        for settings in self.root.glob("node-*/node.toml"):
            port = tomllib.loads(settings.read_text("utf-8"))["runtime_port"]
            found.update(processes_mentioning(f"--runtime-api-address 127.0.0.1:{port} "))
        return sorted(found)
