"""``node start`` tells its operator what the node does, from the logs its children write."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from residency.cli.node_watch import NodeWatch, reachability

pytestmark = pytest.mark.unit


def _watch(tmp_path: Path, said: list[tuple[str, str]]) -> NodeWatch:
    (tmp_path / "supernode.log").write_text("INFO :      an earlier run's line\n", "utf-8")
    return NodeWatch(
        "DE",
        "coord.example.org:9092",
        tmp_path / "supernode.log",
        tmp_path / "node.log",
        say=lambda style, line: said.append((style, line)),
        probe=lambda address: f"no route to {address}",
    )


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


def test_connection_retries_and_rounds_are_said_as_they_happen(tmp_path: Path) -> None:
    said: list[tuple[str, str]] = []
    watch = _watch(tmp_path, said)
    watch.tick()
    assert said == []  # what was logged before this start is not repeated
    _append(
        tmp_path / "supernode.log",
        "WARNING :   Connection attempt failed, retrying in 1.73 seconds\n",
    )
    watch.tick()
    assert said == [
        (
            "warn",
            "node DE: cannot reach the coordinator coord.example.org:9092: no route to "
            "coord.example.org:9092; retrying in 2 s (the wait doubles up to a limit)",
        )
    ]
    _append(tmp_path / "supernode.log", "INFO :      SuperNode ID: 4242\nINFO :      [RUN 7]\n")
    node_log = tmp_path / "node.log"
    _append(
        node_log,
        "2026-12-06 09:00:00,001 INFO residency.node: DE confirmed job toy (target eps 8)\n"
        "2026-12-06 09:00:01,002 INFO flwr: something of Flower's\n"
        "2026-12-06 09:00:02,003 WARNING residency.node: DE refused round 2: job budget 8.00\n"
        "2026-12-06 09:00:03,004 ERROR residency.egress: node error during train; details "
        'withheld from the coordinator\nTraceback (most recent call last):\n  File "x"\n',
    )
    _append(node_log, "2026-12-06 09:00:04,005 INFO residency.node: DE trained round 3")
    watch.tick()  # the last line is not complete yet
    assert said[1:] == [
        ("good", "node DE: connected to coord.example.org:9092 (node id 4242)"),
        ("info", "DE confirmed job toy (target eps 8)"),
        ("warn", "DE refused round 2: job budget 8.00"),
        (
            "error",
            f"node error during train; details withheld from the coordinator (details: {node_log})",
        ),
    ]
    _append(node_log, " of job toy\n")
    _append(
        tmp_path / "supernode.log",
        "WARNING :   Connection attempt failed, retrying in 4.1 seconds\n",
    )
    watch.tick()
    assert said[5][1].startswith("node DE: lost the coordinator coord.example.org:9092: ")
    assert said[6] == ("info", "DE trained round 3 of job toy")


def test_an_unreachable_coordinator_is_explained() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
    assert reachability(f"127.0.0.1:{port}") == "nothing listens there (connection refused)"
    assert reachability("no-such-host.invalid:9092") == (
        "the name no-such-host.invalid does not resolve"
    )
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert reachability(f"127.0.0.1:{server.getsockname()[1]}").startswith(
            "it accepts TCP connections"
        )
