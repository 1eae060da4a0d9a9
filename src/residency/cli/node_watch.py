"""What ``residency node start`` tells its operator while the node runs.

The SuperNode and the ClientApp's tasks are child processes that log to files; the operator
watching the daemon (a terminal, ``journalctl``) would otherwise see one line and then
nothing. The supervisor follows both logs and prints what an operator acts on: connected,
the coordinator unreachable (why, and when the next try is), each job confirmed, each round
trained and what it charged, each refusal with its reason, each fault with where to look.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Say = Callable[[str, str], None]
"""Print one line in a style (``info``, ``good``, ``warn``, ``error``)."""

_NODE_LINE = re.compile(r"^\S+ \S+ (INFO|WARNING|ERROR|CRITICAL) (residency[\w.]*): (.*)$")
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
_RETRY = re.compile(r"Connection attempt failed, retrying in ([\d.]+) seconds")
_RECONNECTED = re.compile(r"Connection successful after ([\d.]+) seconds and (\d+) tries")
_STYLE = {"INFO": "info", "WARNING": "warn", "ERROR": "error", "CRITICAL": "error"}


def reachability(address: str, *, timeout_s: float = 3.0) -> str:
    """Why ``host:port`` cannot be reached, in words, from one TCP connection attempt."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return "it accepts TCP connections, so TLS or the node key failed"
    except socket.gaierror:
        return f"the name {host} does not resolve"
    except ConnectionRefusedError:
        return "nothing listens there (connection refused)"
    except TimeoutError:
        return f"no answer within {timeout_s:g} s (a firewall, or the host is down)"
    except (OSError, ValueError) as exc:
        return str(exc)


@dataclass
class _Tail:
    """New complete lines of a file that another process appends to."""

    path: Path
    offset: int = 0
    partial: bytes = b""

    def lines(self) -> list[str]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        self.offset += len(data)
        *done, self.partial = (self.partial + data).split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in done]


@dataclass
class NodeWatch:
    """Follows the SuperNode's log and the node's own log from where they end now."""

    country: str
    coordinator: str
    supernode_log: Path
    node_log: Path | None
    say: Say
    probe: Callable[[str], str] = reachability
    _tails: list[tuple[str, _Tail]] = field(default_factory=list)
    _connected: bool = False

    def __post_init__(self) -> None:
        for name, path in (("supernode", self.supernode_log), ("node", self.node_log)):
            if path is not None:
                start = path.stat().st_size if path.exists() else 0
                self._tails.append((name, _Tail(path, start)))

    def tick(self) -> None:
        """Print what was logged since the last tick (called by the supervisor's loop)."""
        for name, tail in self._tails:
            for line in tail.lines():
                if name == "supernode":
                    self._supernode(line)
                else:
                    self._node(line)

    def _supernode(self, line: str) -> None:
        who = f"node {self.country}"
        if found := _NODE_ID.search(line):
            self._connected = True
            self.say("good", f"{who}: connected to {self.coordinator} (node id {found[1]})")
        elif found := _RETRY.search(line):
            why = self.probe(self.coordinator)
            state = "lost" if self._connected else "cannot reach"
            self.say(
                "warn",
                f"{who}: {state} the coordinator {self.coordinator}: {why}; retrying in "
                f"{float(found[1]):.0f} s (the wait doubles up to a limit)",
            )
        elif found := _RECONNECTED.search(line):
            self._connected = True
            self.say(
                "good",
                f"{who}: reconnected to {self.coordinator} after {float(found[1]):.0f} s "
                f"and {found[2]} tries",
            )

    def _node(self, line: str) -> None:
        found = _NODE_LINE.match(line)
        if found is None:  # a traceback's continuation lines, another library's output
            return
        level, _, message = found.groups()
        if level in ("ERROR", "CRITICAL"):  # a fault: the sentence, and where the rest is
            message += f" (details: {self.node_log})"
        self.say(_STYLE[level], message)
