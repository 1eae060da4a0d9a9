"""Across the border: what country nodes send their coordinator, captured on the wire (issue 3).

Each country's node runs in its own network namespace, joined to a bridge in the root
namespace by a veth pair; the coordinator listens on the bridge, so everything a node says to
the coordinator crosses one interface, which ``dumpcap`` records. With TLS off, the canary
strings planted in every country's records must appear nowhere in that traffic: not in the
raw packets, not in the reassembled TCP streams, not in the HTTP bodies as tshark decodes
them; the same search does find what a node legitimately sends (a metric name, its dataset
account id), which shows it would have found a canary. With TLS on, every byte of every
connection is inside a TLS record.

Needs root (network namespaces) and tshark; CI runs as root and ``.ci/run`` installs tshark.
Neither missing is a reason to skip: the test fails and says what is needed.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deployment_harness import Federation, cli, wait_until
from netns import (
    NamespacesUnavailable,
    Network,
    count_frames,
    create_network,
    http_bodies,
    start_capture,
    tcp_streams,
    wireshark_tool,
)
from residency.cli.flower import Coordinator
from residency.common.wire import EPSILON_ROUND
from toy_federation import write_toy_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNTRIES = ("DE", "FR", "ES")
CANARY = re.compile(rb"zqxcanary\w+?wvk")
TLS_CONTENT_TYPES = {20, 21, 22, 23}  # change_cipher_spec, alert, handshake, application_data


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    for tool in ("dumpcap", "tshark"):
        try:
            wireshark_tool(tool)
        except FileNotFoundError as exc:
            pytest.fail(str(exc), pytrace=False)
    try:
        made = create_network(COUNTRIES)
    except NamespacesUnavailable as exc:
        pytest.fail(
            f"cannot create network namespaces: {exc}. This test needs root (CAP_NET_ADMIN) "
            "and iproute2 (`ip netns`, veth, bridge); CI runs it as root. It fails instead of "
            "skipping because issue 3's cross-border check must run.",
            pytrace=False,
        )
    yield made
    errors = made.close()
    assert not errors, errors


@dataclass
class Crossing:
    """One federation whose node traffic was captured on the bridge, after everything stopped."""

    network: Network
    federation: Federation
    job_dir: Path
    pcap: Path
    results: dict[str, object]
    exit_codes: dict[str, int]

    @property
    def port(self) -> int:
        return self.federation.port

    def canaries(self) -> set[bytes]:
        """The canaries the nodes really hold, read back from their data files."""
        return {
            found
            for country in COUNTRIES
            for found in CANARY.findall((self.job_dir / f"{country.lower()}.csv").read_bytes())
        }

    def accounts(self) -> dict[str, bytes]:
        """Each country's dataset account id, which its node reports with every update."""
        privacy = self.results["privacy"]
        assert isinstance(privacy, dict)
        return {country: str(privacy[country]["dataset_account"]).encode() for country in COUNTRIES}

    def node_traffic(self, country: str, *, to_coordinator: bool) -> int:
        """Frames between one node and the coordinator's port, in one direction."""
        node, host = self.network.node_ip(country), self.network.host_ip
        src, dst = (node, host) if to_coordinator else (host, node)
        port = "tcp.dstport" if to_coordinator else "tcp.srcport"
        return count_frames(self.pcap, f"ip.src=={src} && ip.dst=={dst} && {port}=={self.port}")


def _cross(network: Network, root: Path, *, tls: bool) -> Crossing:
    """Start a coordinator and three nodes in their namespaces, capture a one-round job."""
    job = write_toy_job(root / "job", countries=COUNTRIES, rounds=1, canaries=True)
    federation = Federation(root / "fed", host=network.host_ip)
    federation.init_coordinator(network.host_ip)
    node_flags = () if tls else ("--insecure",)
    security = ("--ca", str(federation.ca)) if tls else ("--insecure",)
    capture = None
    try:
        if tls:
            federation.start_coordinator()
        else:
            federation.start_coordinator("--insecure", "--no-node-auth")
        capture = start_capture(network.bridge, root / "bridge.pcapng")
        for country in COUNTRIES:
            node = federation.init_node(country, root / "job" / f"{country.lower()}.csv")
            if tls:
                federation.admit(node, country)
            federation.start_node(node, *node_flags, prefix=network.prefix(country))
        if tls:
            federation.wait_online(COUNTRIES)
        else:
            _wait_online_insecure(federation, len(COUNTRIES))
        out = root / "out"
        run = cli(
            "run",
            str(job),
            "--key",
            str(federation.launcher_key),
            "--coordinator",
            federation.address,
            *security,
            "--output",
            str(out),
            timeout_s=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        results = json.loads((out / "results.json").read_text("utf-8"))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_diagnostics(federation)}") from exc
    finally:
        codes = _stop_all(federation)
        if capture is not None:
            codes["dumpcap"] = capture.stop()
    assert capture is not None
    return Crossing(network, federation, root / "job", capture.path, results, codes)


def _diagnostics(federation: Federation, lines: int = 12) -> str:
    """The last lines each daemon and each SuperNode wrote, for a failure message."""
    logs = [(daemon.name, daemon.log) for daemon in federation.daemons]
    logs += [
        (f"{folder.name} supernode", folder / "logs" / "supernode.log")
        for folder in sorted(federation.root.glob("node-*"))
        if folder.is_dir()
    ]
    parts = []
    for name, path in logs:
        text = path.read_text("utf-8", "replace") if path.exists() else "(no log)"
        parts.append(f"--- {name} ({path}):\n" + "\n".join(text.splitlines()[-lines:]))
    return "\n".join(parts)


def _stop_all(federation: Federation) -> dict[str, int]:
    """SIGINT every node at once (each takes seconds to say goodbye), then the coordinator."""
    nodes = [daemon for daemon in federation.daemons if daemon.name != "coordinator"]
    try:
        for daemon in nodes:
            if daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGINT)
        wait_until(
            lambda: all(daemon.process.poll() is not None for daemon in nodes),
            timeout_s=60,
            what="the nodes to stop on SIGINT",
        )
    finally:
        codes = federation.stop_all()  # the coordinator, and any node still running
    return codes


def _wait_online_insecure(federation: Federation, count: int) -> None:
    """``coordinator nodes`` speaks TLS only; ask SuperLink directly over plain HTTP."""
    coordinator = Coordinator(address=federation.address, ca=None, insecure=True)

    def online() -> bool:
        nodes: list[dict[str, object]] = coordinator.call_json("supernode", "ls", "residency")[
            "nodes"
        ]
        return sum(node.get("status") == "online" for node in nodes) >= count

    wait_until(online, timeout_s=120, what=f"{count} insecure nodes online")


@pytest.fixture(scope="module")
def plaintext(network: Network, tmp_path_factory: pytest.TempPathFactory) -> Crossing:
    return _cross(network, tmp_path_factory.mktemp("plaintext"), tls=False)


@pytest.fixture(scope="module")
def encrypted(network: Network, tmp_path_factory: pytest.TempPathFactory) -> Crossing:
    return _cross(network, tmp_path_factory.mktemp("tls"), tls=True)


def _assert_job_completed(crossing: Crossing) -> None:
    assert crossing.results["status"] == "completed", crossing.results
    rounds = crossing.results["rounds"]
    assert isinstance(rounds, list)
    assert len(rounds) == 1
    assert {node["country"] for node in rounds[0]["nodes"]} == set(COUNTRIES)
    assert set(crossing.exit_codes.values()) == {0}, crossing.exit_codes


def _assert_every_node_talked(crossing: Crossing) -> None:
    # A whole round (model down, update up) is hundreds of frames per node; require plenty.
    for country in COUNTRIES:
        assert crossing.node_traffic(country, to_coordinator=True) > 50, country
        assert crossing.node_traffic(country, to_coordinator=False) > 50, country
    others = count_frames(crossing.pcap, f"tcp && !(tcp.port=={crossing.port})")
    assert others == 0, "nodes spoke TCP to something other than the coordinator's port"


def _found(needle: bytes, haystacks: list[bytes]) -> int:
    """In how many of ``haystacks`` ``needle`` occurs, ignoring case."""
    lowered = needle.lower()
    return sum(lowered in haystack.lower() for haystack in haystacks)


@dataclass(frozen=True)
class Views:
    """The same capture three ways: raw file, reassembled TCP streams, decoded HTTP bodies."""

    raw: list[bytes]
    to_coordinator: list[bytes]
    from_coordinator: list[bytes]
    bodies: list[bytes]

    @staticmethod
    def nowhere() -> dict[str, int]:
        return dict.fromkeys(("raw", "to coordinator", "from coordinator", "http bodies"), 0)

    def count(self, needle: bytes) -> dict[str, int]:
        return {
            "raw": _found(needle, self.raw),
            "to coordinator": _found(needle, self.to_coordinator),
            "from coordinator": _found(needle, self.from_coordinator),
            "http bodies": _found(needle, self.bodies),
        }


def _views(crossing: Crossing, scratch: Path) -> Views:
    streams = tcp_streams(crossing.pcap, crossing.port)
    return Views(
        raw=[crossing.pcap.read_bytes()],
        to_coordinator=[data for (_, way), data in streams.items() if way == "to"],
        from_coordinator=[data for (_, way), data in streams.items() if way == "from"],
        bodies=http_bodies(crossing.pcap, crossing.port, scratch),
    )


def test_plaintext_job_completes_with_every_node_in_its_own_namespace(
    plaintext: Crossing,
) -> None:
    _assert_job_completed(plaintext)
    _assert_every_node_talked(plaintext)


def test_canaries_never_cross_the_border_in_plaintext(plaintext: Crossing, tmp_path: Path) -> None:
    canaries = plaintext.canaries()
    assert len(canaries) == len(COUNTRIES), canaries  # every country holds its own canary
    views = _views(plaintext, tmp_path / "http")
    assert len(views.to_coordinator) >= len(COUNTRIES)
    assert len(views.bodies) > 100  # tshark decoded the HTTP exchanges

    # Positive controls, same search: a metric name and each country's dataset account id
    # travel up in the clear with every update, so a canary sent the same way would be found.
    # Flower stores message parts by content hash and a node pushes only those the SuperLink
    # lacks: countries of equal size send byte-identical metrics, which cross once. Each
    # country's node record (its account id) is its own, so that control is per country.
    control = views.count(EPSILON_ROUND.encode())
    assert control["raw"] == 1, control
    assert control["to coordinator"] >= 1, control
    assert control["http bodies"] >= 1, control
    for country, dataset_account in plaintext.accounts().items():
        seen = views.count(dataset_account)
        assert min(seen["raw"], seen["to coordinator"], seen["http bodies"]) > 0, (country, seen)
    assert views.count(b"POST /v1/fleet/")["to coordinator"] >= len(COUNTRIES)
    # ... and the checks the TLS test relies on do tell plain HTTP from TLS.
    as_http = ("-d", f"tcp.port=={plaintext.port},http")
    assert count_frames(plaintext.pcap, "http.request || http.response", *as_http) > 100
    with pytest.raises(AssertionError, match="not a TLS record"):
        _tls_records(views.to_coordinator[0])

    for canary in sorted(canaries):
        assert views.count(canary) == views.nowhere(), canary
    assert views.count(b"zqxcanary") == views.nowhere()


def test_encrypted_job_completes_with_every_node_in_its_own_namespace(
    encrypted: Crossing,
) -> None:
    _assert_job_completed(encrypted)
    _assert_every_node_talked(encrypted)


def _tls_records(data: bytes) -> list[int]:
    """Content types of the TLS records that make up ``data``; AssertionError if it is not TLS."""
    types, offset = [], 0
    while offset < len(data):
        header = data[offset : offset + 5]
        assert len(header) == 5, f"stream ends inside a TLS record header at byte {offset}"
        content_type, major, length = header[0], header[1], int.from_bytes(header[3:5], "big")
        where = f"not a TLS record at byte {offset}: {data[offset : offset + 16]!r}"
        assert content_type in TLS_CONTENT_TYPES, where
        assert major == 3, where
        offset += 5 + length
        assert offset <= len(data), "stream ends inside a TLS record"
        types.append(content_type)
    return types


def test_with_tls_every_byte_between_nodes_and_coordinator_is_tls(
    encrypted: Crossing, tmp_path: Path
) -> None:
    views = _views(encrypted, tmp_path / "http")
    streams = views.to_coordinator + views.from_coordinator
    assert len(views.to_coordinator) >= len(COUNTRIES)
    for data in streams:
        records = _tls_records(data)
        assert records[0] == 22, "a connection that does not open with a TLS handshake"
    assert sum(_tls_records(data).count(23) for data in streams) > 100  # application data

    as_tls = ("-d", f"tcp.port=={encrypted.port},tls")
    for country in COUNTRIES:
        hellos = count_frames(
            encrypted.pcap,
            f"tls.handshake.type == 1 && ip.src == {encrypted.network.node_ip(country)}",
            *as_tls,
        )
        assert hellos >= 1, f"no TLS ClientHello from {country}"
    as_http = ("-d", f"tcp.port=={encrypted.port},http")
    assert count_frames(encrypted.pcap, "http.request || http.response", *as_http) == 0
    assert views.bodies == []

    # What the plaintext test finds in the clear is nowhere to be seen here. (Not "HTTP/1.1":
    # the ClientHello offers ALPN "http/1.1" in the clear, and the search ignores case.)
    for needle in (b"POST /", b"/v1/fleet/", EPSILON_ROUND.encode(), b"zqxcanary"):
        assert views.count(needle) == views.nowhere(), needle
    for dataset_account in encrypted.accounts().values():
        assert views.count(dataset_account) == views.nowhere()
