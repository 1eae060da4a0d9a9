"""Who takes part in a round: the job's countries, who is connected, who confirmed, quorum.

Node ids are Flower's; countries are what the job names. In a deployment each admitted key
speaks for one country; in a simulation a node is known by the country its replies name.
Every wait has a deadline, and a round goes out only to nodes that confirmed they can afford
the whole job (:func:`residency.client.admission.confirm`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid

from residency.common import wire
from residency.common.config.job import Job
from residency.server.observer import FederationObserver
from residency.server.replies import Countries, node_round, record_bytes
from residency.server.results import NodeRound, NodeStatus
from residency.server.run_ledger import RunLedger

log = logging.getLogger("residency.coordinator")

WAITING_EVERY_S = 15.0
"""How often a round still waiting for its countries says who is missing."""

END_HOLDS_S = 10.0
"""How long the coordinator waits for nodes to hear that a job ended (they free its hold)."""


class JobFailed(RuntimeError):
    """The federation cannot continue (no valid update in a round, or nodes never came)."""


def check_admitted(job: Job, countries: Countries) -> None:
    """In a deployment, every country the job names must have an admitted node key."""
    if not countries.admitted:
        return
    missing = {node.country for node in job.nodes} - set(countries.admitted.values())
    if missing:
        raise JobFailed(
            f"no admitted node for {', '.join(sorted(missing))}; fix: `residency coordinator "
            "admit node.pub --country XX` for each country the job names"
        )


def check_stop(stop: threading.Event | None) -> None:
    """End the run as stopped if a stop was asked for (Ctrl-C of a simulation)."""
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt


def pause(seconds: float, stop: threading.Event | None) -> None:
    """Sleep between polls; a stop request (Ctrl-C of a simulation) ends the run as stopped."""
    if stop is not None and stop.wait(seconds):
        raise KeyboardInterrupt
    if stop is None:
        time.sleep(seconds)


def exchange(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout_s: float,
    on_reply: Callable[[Message, int], None],
    stop: threading.Event | None = None,
) -> list[Message]:
    """Push messages and pull replies until all arrive or the round times out.

    Only nodes reply: an error the SuperLink itself answers for a message it could not
    deliver (``NODE_UNAVAILABLE``, an expired message) comes from its own node id and says
    that no reply will come, so its node is left to the caller as one that sent none, by
    its own country, never as a failure of an unknown node ``node-1``.
    """
    sizes: dict[str, int] = {}
    addressees: dict[str, int] = {}
    outgoing = list(messages)
    ids = list(grid.push_messages(outgoing))
    for message_id, message in zip(ids, outgoing, strict=True):
        sizes[message_id] = record_bytes(message.content)
        addressees[message_id] = message.metadata.dst_node_id
    pending = set(ids)
    replies: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(pending):
            asked = reply.metadata.reply_to_message_id
            pending.discard(asked)
            sender = reply.metadata.src_node_id
            if sender == SUPERLINK_NODE_ID and addressees.get(asked) != SUPERLINK_NODE_ID:
                log.info("message %s: %s", asked, reply.error.reason if reply.has_error() else "")
                continue
            replies.append(reply)
            on_reply(reply, sizes.get(asked, 0))
        if pending:
            pause(0.1, stop)
    if pending:
        log.warning("%d node(s) did not reply within %g s", len(pending), timeout_s)
    return replies


@dataclass
class Roster:
    """The job's nodes as the coordinator knows them during one run."""

    grid: Grid
    job: Job
    admitted: Mapping[int, str]
    observer: FederationObserver | None
    plan: Callable[[], ConfigRecord]  # the round plan a query carries (the model's config)
    ledger: RunLedger | None = None
    stop: threading.Event | None = None  # RunControl.stop
    confirmed: set[int] = field(default_factory=set)  # confirmed the whole job (and hold it)
    current_round: int = 1

    def __post_init__(self) -> None:
        self.countries = Countries({}, self.admitted)

    def takes_part(self, node_id: int) -> bool:
        """Only the job's countries get its messages (all nodes when none are admitted)."""
        if not self.admitted:
            return True
        return self.admitted.get(node_id) in {node.country for node in self.job.nodes}

    def _connected(self) -> tuple[set[int], set[str]]:
        """The job's nodes connected now, and the countries they speak for (where known)."""
        ids = set(self.grid.get_node_ids())
        if self.admitted:
            ids = {i for i in ids if self.takes_part(i)}
            return ids, {self.admitted[i] for i in ids}
        return ids, {self.countries.names[i] for i in ids if i in self.countries.names}

    def _absent(self, ids: set[int], names: set[str]) -> list[str]:
        """The job's countries not connected: by name, or counted where no reply named them."""
        if self.admitted:
            return sorted({node.country for node in self.job.nodes} - names)
        gone = sorted({c for i, c in self.countries.names.items() if i not in ids})
        unnamed = len(self.job.nodes) - len(ids) - len(gone)
        return gone + ([f"{unnamed} node(s) never heard from"] if unnamed > 0 else [])

    def round_nodes(self, server_round: int) -> tuple[list[int], list[str]]:
        """The round's nodes and the countries absent; every wait has a deadline.

        Round 1 waits up to ``nodes_timeout_s`` for every country, then starts if it has
        ``required_to_send``. Later rounds start at once with whoever is connected, once that
        is enough, so a node that comes back joins the next round and a dead one costs no wait.
        """
        wanted = len(self.job.nodes)
        required = self.job.train.required_to_send(wanted, server_round)
        timeout_s = self.job.train.nodes_timeout_s
        started = time.monotonic()
        deadline = started + timeout_s
        told = started - WAITING_EVERY_S  # say who is missing at once, then every so often
        while True:
            ids, names = self._connected()
            present = len(names) if self.admitted else len(ids)
            if present >= wanted or (server_round > 1 and present >= required):
                break
            if self.observer and time.monotonic() - told >= WAITING_EVERY_S:
                told = time.monotonic()
                absent = self._absent(ids, names)
                self.observer.waiting(server_round, absent, told - started, timeout_s)
            if time.monotonic() > deadline:
                if present >= required:
                    break
                missing = ", ".join(self._absent(ids, names))
                raise JobFailed(
                    f"round {server_round}: {present} of {wanted} countries connected after "
                    f"{timeout_s:g} s and the round needs {required} (missing: {missing}); "
                    "fix: start those nodes, or lower [train] min_nodes"
                )
            pause(0.2, self.stop)
        return sorted(ids), self._absent(ids, names)

    def confirm_nodes(
        self, server_round: int, node_ids: list[int]
    ) -> tuple[list[int], dict[int, NodeRound], list[str]]:
        """Ask every node not yet asked to confirm the whole job before it is sent a round.

        A node confirms only if the job fits its dataset's budget to the end, and then holds
        that budget for it (:func:`residency.client.admission.confirm`); nothing is charged.
        Returns the confirmed nodes of ``node_ids``, the refusals (reported like a round's),
        and the countries that sent no confirmation in time or failed (left out, uncharged).
        """
        asking = [i for i in node_ids if i not in self.confirmed]
        refused: dict[int, NodeRound] = {}
        silent: list[str] = []
        if asking:
            timeout_s = self.job.train.round_timeout_s
            messages = self._queries(asking, ttl_s=timeout_s, **{"server-round": server_round})

            def on_reply(reply: Message, bytes_down: int) -> None:
                node_id = reply.metadata.src_node_id
                report = node_round(reply, 0, self.countries, server_round=server_round)
                if report.status is NodeStatus.OK:
                    self.confirmed.add(node_id)
                elif report.status is NodeStatus.REFUSED:
                    refused[node_id] = report
                    if self.observer:
                        self.observer.node_finished(server_round, report)
                else:
                    log.warning("%s did not confirm job: %s", report.country, report.reason)
                    silent.append(report.country)

            replies = exchange(
                self.grid, messages, timeout_s=timeout_s, on_reply=on_reply, stop=self.stop
            )
            check_stop(self.stop)
            answered = {reply.metadata.src_node_id for reply in replies}
            silent += [self.countries.of(i) for i in asking if i not in answered]
        return [i for i in node_ids if i in self.confirmed], refused, silent

    def _queries(self, node_ids: list[int], *, ttl_s: float, **plan: bool | int) -> list[Message]:
        """One query per node: the job's plan with ``plan``'s keys set, and no model."""
        config = ConfigRecord({**dict(self.plan()), **plan})
        content = RecordDict({wire.ARRAYS: ArrayRecord(), wire.CONFIG: config})
        return [
            Message(content, message_type=MessageType.QUERY, dst_node_id=i, ttl=ttl_s)
            for i in node_ids
        ]

    def end_holds(self) -> None:
        """Tell every node that confirmed the job it is over, so it frees what it still holds.

        Best effort, after the run's outcome is written: a node that does not hear it keeps
        the hold until its own ``reservation_hours`` lapse, which costs availability only.
        """
        if not self.confirmed:
            return
        ended = {"job-ended": True, "server-round": self.current_round}
        messages = self._queries(sorted(self.confirmed), ttl_s=END_HOLDS_S, **ended)
        try:
            exchange(self.grid, messages, timeout_s=END_HOLDS_S, on_reply=lambda *_: None)
        except Exception as exc:  # the run is over whatever happens here
            log.warning("could not tell the nodes that the job ended: %s", exc)

    def require_confirmed(
        self,
        server_round: int,
        confirmed: list[int],
        refused: Mapping[int, NodeRound],
        missing: list[str],
    ) -> None:
        """End the job before a round goes out that fewer nodes confirmed than it needs."""
        wanted = len(self.job.nodes)
        required = self.job.train.required_to_send(wanted, server_round)
        if len(confirmed) >= required:
            return
        if self.ledger is not None:
            for report in refused.values():
                self.ledger.refusal(report.country, server_round, report.reason or "")
        reasons = [r.reason or f"{r.country} refused" for r in refused.values()]
        reasons += [f"{country}: no confirmation" for country in missing]
        charged = "nothing was charged" if server_round == 1 else "round not sent"
        raise JobFailed(
            f"round {server_round}: {len(confirmed)} of {wanted} countries confirmed the whole "
            f"job and the round needs {required} ({'; '.join(reasons) or 'no replies'}); "
            f"{charged}"
        )

    def require_quorum(
        self, server_round: int, valid: int, reports: Mapping[int, NodeRound], absent: list[str]
    ) -> None:
        """End the job (exit 3) when fewer valid updates came than the round needs."""
        wanted = len(self.job.nodes)
        required = self.job.train.required_nodes(wanted, server_round)
        if valid >= required:
            return
        missing = [f"{r.country}: {r.reason}" for r in reports.values() if r.reason]
        missing += [f"{country}: not connected" for country in absent]
        raise JobFailed(
            f"round {server_round}: valid updates from {valid} of {wanted} countries and the "
            f"round needs {required} ({'; '.join(missing) or 'no replies'})"
        )
