"""Network namespaces on one bridge, and packet captures on that bridge, for border tests.

Each country gets its own network namespace joined to a bridge in the root namespace by a veth
pair, so its node's traffic to the coordinator crosses one interface that can be captured. All
names derive from this process's PID, so concurrent runs never touch each other's devices;
everything made here is removed by ``Network.close``. Creating namespaces needs root (or
CAP_NET_ADMIN) and iproute2; captures need Wireshark's ``dumpcap`` and ``tshark``.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deployment_harness import wait_until

SUBNET_PREFIX = "10.213"
_networks = itertools.count()


class NamespacesUnavailable(RuntimeError):
    """This machine (or this user) cannot create network namespaces, veths or bridges."""


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; raise ``NamespacesUnavailable`` with its error if it fails."""
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError as exc:
        raise NamespacesUnavailable("the `ip` command (iproute2) is not installed") from exc
    if done.returncode != 0:
        raise NamespacesUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def _free_subnet() -> str:
    """A ``10.213.X`` /24 no interface on this machine uses, starting from a PID-derived X."""
    used = set(re.findall(rf"\b{re.escape(SUBNET_PREFIX)}\.(\d+)\.", ip("-o", "addr").stdout))
    used |= set(re.findall(rf"\b{re.escape(SUBNET_PREFIX)}\.(\d+)\.", ip("route").stdout))
    start = os.getpid() % 250
    for step in range(250):
        third = (start + step) % 250 + 1
        if str(third) not in used:
            return f"{SUBNET_PREFIX}.{third}"
    raise NamespacesUnavailable(f"every {SUBNET_PREFIX}.X.0/24 subnet is already in use")


@dataclass
class Network:
    """A bridge with the coordinator's address and one namespace per country."""

    tag: str
    subnet: str
    countries: tuple[str, ...]
    made: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        """The bridge interface in the root namespace (captures listen here)."""
        return f"rzb{self.tag}"

    @property
    def host_ip(self) -> str:
        """The coordinator's address, on the bridge."""
        return f"{self.subnet}.1"

    def namespace(self, country: str) -> str:
        """The network namespace a country's node runs in."""
        return f"residency-{self.tag}-{country.lower()}"

    def node_ip(self, country: str) -> str:
        """The country's address inside its namespace."""
        return f"{self.subnet}.{10 + self.countries.index(country)}"

    def prefix(self, country: str) -> list[str]:
        """Command prefix that runs a program inside the country's namespace."""
        return ["ip", "netns", "exec", self.namespace(country)]

    def _veth(self, country: str, end: str) -> str:
        return f"rzv{self.tag}{end}{self.countries.index(country)}"

    def create(self) -> None:
        """Make the bridge, the namespaces and their veth pairs; wait until every link is up."""
        ip("link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", "del", self.bridge))
        ip("addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for country in self.countries:
            ns, outer, inner = (
                self.namespace(country),
                self._veth(country, "h"),
                self._veth(country, "n"),
            )
            ip("netns", "add", ns)
            self.made.append(("netns", "del", ns))
            ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
            self.made.append(("link", "del", outer))
            ip("link", "set", outer, "master", self.bridge)
            ip("link", "set", outer, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{self.node_ip(country)}/24", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
        wait_until(self._forwarding, timeout_s=30, what="every namespace's link to forward")

    def _forwarding(self) -> bool:
        """Every veth is up at both ends and its bridge port forwards."""
        for country in self.countries:
            inner = ip(
                "-n", self.namespace(country), "-o", "link", "show", self._veth(country, "n")
            )
            outer = ip("-d", "-o", "link", "show", self._veth(country, "h"))
            if "LOWER_UP" not in inner.stdout or "forwarding" not in outer.stdout:
                return False
        return True

    def close(self) -> list[str]:
        """Remove what ``create`` made, newest first; the errors, if any (never raises)."""
        errors = []
        while self.made:
            undo = self.made.pop()
            if undo[:2] == ("link", "del") and undo[2] != self.bridge:
                # A veth goes with its namespace; delete it only if it is still there.
                shown = subprocess.run(
                    ["ip", "link", "show", undo[2]], capture_output=True, check=False
                )
                if shown.returncode != 0:
                    continue
            try:
                ip(*undo)
            except NamespacesUnavailable as exc:
                errors.append(str(exc))
        return errors


def create_network(countries: Sequence[str]) -> Network:
    """A fresh bridge and one namespace per country, named after this process (and a letter)."""
    tag = f"{os.getpid()}{chr(ord('a') + next(_networks) % 26)}"
    network = Network(tag=tag, subnet=_free_subnet(), countries=tuple(countries))
    try:
        network.create()
    except BaseException:
        network.close()
        raise
    return network


def wireshark_tool(name: str) -> str:
    """Path of ``dumpcap`` or ``tshark``; a clear error if Wireshark is not installed."""
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install tshark (.ci/run does)")
    return found


@dataclass
class Capture:
    """A running ``dumpcap`` writing one interface's packets to a pcapng file."""

    process: subprocess.Popen[bytes]
    path: Path
    log: Path

    def stop(self, timeout_s: float = 30) -> int:
        """SIGINT by PID (dumpcap then flushes and closes the file), then wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                return self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"dumpcap ignored SIGINT for {timeout_s:g} s") from None
        return int(self.process.returncode)


def start_capture(interface: str, path: Path, *, bpf: str | None = None) -> Capture:
    """Capture ``interface`` (all of it, or the packets matching ``bpf``) to ``path``.

    Returns once dumpcap reports that it captures, which it does after opening the interface.
    """
    dumpcap = wireshark_tool("dumpcap")
    log = path.with_suffix(".log")
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [dumpcap, "-i", interface, *(["-f", bpf] if bpf else []), "-w", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    capture = Capture(process, path, log)

    def listening() -> bool:
        return "Capturing on" in log.read_text("utf-8", "replace") or process.poll() is not None

    try:
        wait_until(listening, timeout_s=30, what=f"dumpcap to capture on {interface}")
    except BaseException:
        capture.stop()
        raise
    assert process.poll() is None, log.read_text("utf-8", "replace")
    return capture


def tshark(pcap: Path, *args: str) -> str:
    """``tshark -r PCAP ARGS`` (no name resolution); its standard output."""
    done = subprocess.run(
        [wireshark_tool("tshark"), "-r", str(pcap), "-n", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def count_frames(pcap: Path, display_filter: str, *options: str) -> int:
    """How many frames of ``pcap`` match a Wireshark display filter."""
    out = tshark(pcap, *options, "-Y", display_filter, "-T", "fields", "-e", "frame.number")
    return len(out.split())


def tcp_streams(pcap: Path, port: int) -> dict[tuple[int, str], bytes]:
    """Every TCP connection to ``port``, reassembled: (stream, "to"/"from" the port) -> bytes.

    Higher protocols are not dissected, so each segment's whole payload is read; segments
    arrive in order and without loss on a local bridge, but retransmissions are dropped anyway.
    """
    out = tshark(
        pcap,
        "--disable-protocol",
        "http",
        "--disable-protocol",
        "tls",
        "-Y",
        f"tcp.port == {port} && tcp.len > 0 && !tcp.analysis.retransmission",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-e",
        "tcp.stream",
        "-e",
        "tcp.dstport",
        "-e",
        "tcp.payload",
    )
    streams: dict[tuple[int, str], bytearray] = defaultdict(bytearray)
    for line in out.splitlines():
        stream, dst_port, payload = line.split("\t")
        direction = "to" if int(dst_port) == port else "from"
        streams[int(stream), direction] += bytes.fromhex(payload.replace(":", ""))
    return {key: bytes(value) for key, value in streams.items()}


def http_bodies(pcap: Path, port: int, folder: Path) -> list[bytes]:
    """Every HTTP body on ``port``, as tshark reassembles and decodes it (chunks, gzip)."""
    folder.mkdir(parents=True, exist_ok=True)
    tshark(
        pcap,
        "-d",
        f"tcp.port=={port},http",
        "-o",
        "http.dechunk_body:TRUE",
        "-o",
        "http.decompress_body:TRUE",
        "-o",
        "tcp.desegment_tcp_streams:TRUE",
        "-o",
        "http.desegment_body:TRUE",
        "-q",
        "--export-objects",
        f"http,{folder}",
    )
    return [path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()]
