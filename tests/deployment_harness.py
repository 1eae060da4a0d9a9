"""Start real coordinators and nodes through the ``residency`` CLI, as an operator would.

Every process is started here and ended here by its own PID (SIGINT first, as the daemons
expect); ports are free ones; waits poll a condition against a deadline. The integration tests
and ``bench/round_overhead.py`` both start their federations with it.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from residency.cli.flower import CONNECTION, Coordinator, flwr_binary
from residency.common.privacy.signing import load_public, public_path
from residency.server.coordinator import CoordinatorDir, superlink_command
from toy_federation import LABELS, TEST_FILE, write_test_set

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


_FLOWER_SUPERLINK = (
    "import sys; from residency.server.superlink import raise_lock_timeout; "
    "raise_lock_timeout(); from flwr.superlink.cli import flower_superlink; "
    "sys.argv[0] = 'flower-superlink'; flower_superlink()"
)


def spawn(
    name: str,
    command: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
) -> Daemon:
    """Start ``command`` in the background, output to ``log``.

    ``env``, when given, is the whole environment; ``new_session`` puts the process in a
    session of its own, out of reach of a terminal's Ctrl-C.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as handle:
        process = subprocess.Popen(
            list(command),
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=new_session,
        )
    return Daemon(name, process, log)


def start(name: str, args: Sequence[str], log: Path, prefix: Sequence[str] = ()) -> Daemon:
    """Start ``residency ARGS`` in the background, output to ``log``."""
    return spawn(name, [*prefix, RESIDENCY, *args], log)


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


def process_parents() -> dict[int, int]:
    """Every process's parent, read from /proc."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (children, their children...), read from /proc."""
    parents = process_parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


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
        """``residency coordinator init`` folder."""
        return self.root / "coordinator"

    @property
    def ca(self) -> Path:
        """The coordinator's CA certificate, the nodes' trust anchor."""
        return self.coordinator_dir / "tls" / "ca.pem"

    @property
    def launcher_key(self) -> Path:
        """The launcher key ``coordinator init`` made and trusts; test nodes trust it too."""
        return self.coordinator_dir / "keys" / "launcher.key"

    @property
    def address(self) -> str:
        """What nodes and ``residency run`` dial."""
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
        # every toy job names this test set, which a coordinator reads from its data folder
        write_test_set(self.coordinator_dir / "data" / TEST_FILE)

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
            "--labels",
            ",".join(LABELS),
            "--budget-epsilon",
            str(budget),
            "--delta",
            str(delta),
            "--runtime-port",
            str(free_port()),
            "--trust-launcher",
            load_public(public_path(self.launcher_key)),
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

    def start_flower_superlink(self) -> Daemon:
        """Flower's own SuperLink on this coordinator's folder: a coordinator not Residency's.

        Same TLS, node authentication, SQLite state and lock timeout as `coordinator start`,
        but Flower's SuperExec and ServerApp runtime, so a run's bundle chooses its ServerApp.
        """
        folder = CoordinatorDir(self.coordinator_dir)
        command, env = superlink_command(folder, folder.load(), insecure=False)
        at = command.index("residency.server.superlink")
        daemon = spawn(
            "Flower SuperLink",
            [sys.executable, "-c", _FLOWER_SUPERLINK, *command[at + 3 :]],
            self.root / "flower-superlink.out",
            env=env,
            new_session=True,
        )
        self.daemons.append(daemon)
        wait_until(lambda: port_open(self.host, self.port), timeout_s=60, what="SuperLink")
        return daemon

    def start_flower_supernode(self, node_dir: Path) -> Daemon:
        """Flower's own SuperNode with a node's admitted key: it runs whatever a run bundles."""
        bin_dir = Path(sys.executable).parent  # it starts flower-superexec by name
        env = {
            **os.environ,
            "FLWR_HOME": str(node_dir / "flwr"),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        command = [
            str(bin_dir / "flower-supernode"),
            "--superlink",
            self.address,
            "--root-certificates",
            str(self.ca),
            "--auth-supernode-private-key",
            str(node_dir / "keys" / "node.key"),
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ]
        daemon = spawn(
            "Flower SuperNode",
            command,
            node_dir.parent / "flower-sn.out",
            env=env,
            new_session=True,
        )
        self.daemons.append(daemon)
        return daemon

    def _run_args(self, job: Path, out: Path, key: Path | None) -> list[str]:
        return [
            "run",
            str(job),
            "--key",
            str(key or self.launcher_key),
            "--coordinator",
            self.address,
            "--ca",
            str(self.ca),
            "--output",
            str(out),
        ]

    def run(
        self, job: Path, out: Path, *, key: Path | None = None, timeout_s: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """`residency run` of ``job`` here, signed with ``key`` (this coordinator's launcher)."""
        return cli(*self._run_args(job, out, key), timeout_s=timeout_s)

    def launch(self, job: Path, out: Path) -> subprocess.Popen[str]:
        """`residency run` of ``job`` here, left running (its output on a pipe)."""
        return subprocess.Popen(
            [RESIDENCY, *self._run_args(job, out, None)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def flwr_run(self, bundle: Path, *, timeout_s: float) -> subprocess.CompletedProcess[str]:
        """Submit an app bundle with Flower's own CLI, as anyone reaching the port could."""
        with Coordinator(address=self.address, ca=self.ca).home() as env:
            return subprocess.run(
                [flwr_binary(), "run", str(bundle), CONNECTION, "--stream"],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )

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
