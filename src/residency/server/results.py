"""``results.json``: the documented record of a federated run (schema in docs/results.md).

Rewritten atomically after every round, so a crash leaves the last complete round on disk.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from residency.common.files import write_atomic

SCHEMA_VERSION = 6
RESULTS_FILE = "results.json"


class Record(BaseModel):
    """Base for result records: unknown keys are a bug, not extra data."""

    model_config = ConfigDict(extra="forbid")


class NodeStatus(StrEnum):
    """How a node's round ended."""

    OK = "ok"
    REFUSED = "refused"
    FAILED = "failed"
    REJECTED = "rejected"


class NodeRound(Record):
    """One country's part in one round, as reported in its (validated) reply.

    No training loss or time: neither is noised, so neither leaves a node.
    """

    country: str
    status: NodeStatus
    examples: int | None = None
    epsilon: float | None = None
    epsilon_round: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    reason: str | None = None
    privacy_unit: str = "record"  # what its epsilon is per, from its signed record (schema 6)


class RoundResult(Record):
    """The global model after one round, and each country's contribution to it."""

    round: int
    accuracy: float | None
    macro_f1: float | None
    test_loss: float | None
    nodes: list[NodeRound]
    bytes_up: int
    bytes_down: int
    seconds: float
    update: str | None = None  # what the round ran: a release or the job's training kind
    dropped: list[str] = []  # countries not connected when it started, or silent until its end
    held_out_accuracy: float | None = None  # on the held-out part, which only chooses
    refine: bool = False  # the warm start's release again, with the budget left


class ClassResult(Record):
    """Final precision, recall and F1 of one label."""

    precision: float
    recall: float
    f1: float
    support: int


class FinalResult(Record):
    """The final global model on the test set."""

    accuracy: float | None
    macro_f1: float | None
    per_class: dict[str, ClassResult]
    model_dir: str
    round: int | None = None  # whose model was kept (best held-out accuracy); None: the last


class CountryPrivacy(Record):
    """The (epsilon, delta)-DP a country's data spent in this job, per its privacy unit.

    ``privacy_unit`` is the node operator's (``record``, or ``person`` with at most
    ``records_per_person`` records each), as its signed record states (schema 6).

    From the country's latest valid signed record, averaged or not: a node charges before it
    trains, so a round rejected after its record arrived still counts. The figures are
    ``None`` until a record arrives; ``rounds_unconfirmed`` counts rounds that may have been
    charged with no record to show (see docs/results.md).
    """

    epsilon: float | None = None
    delta: float
    target_epsilon: float
    accountant: str
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    rounds_averaged: int = 0
    rounds_charged: int = 0
    rounds_unconfirmed: int = 0
    dataset_account: str | None = None
    epsilon_dataset: float | None = None
    budget_epsilon: float | None = None
    privacy_unit: str = "record"
    records_per_person: int | None = None


class InFlight(Record):
    """A round whose messages went out and that has not closed: what a restart must settle.

    Written before the messages leave, so a coordinator that dies mid-round leaves on disk
    which countries may have charged a round nobody will aggregate.
    """

    round: int
    countries: list[str]
    refine: bool = False  # the release again, which ends the job


class Resumed(Record):
    """An earlier Flower run of this job that a coordinator crash interrupted, resumed here.

    Written by ``coordinator start`` (:mod:`residency.server.recovery`) into the new run's
    folder: rounds up to ``next_round`` - 1 are the earlier run's (its ``rounds``, kept here),
    and a round in flight at the crash (``lost_round``) is never sent again, since nodes may
    have charged it.
    """

    from_run: str
    next_round: int
    lost_round: int | None = None
    job_sha256: str
    at: str


class RunStatus(StrEnum):
    """Lifecycle of a run."""

    QUEUED = "queued"  # launched and accepted; waits for a free slot (max_concurrent_runs)
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    RESUMED = "resumed"  # interrupted by a coordinator crash, continued under a new run


class Results(Record):
    """Everything a user needs after a run; see docs/results.md for each field."""

    schema_version: int = SCHEMA_VERSION
    job: str
    status: RunStatus = RunStatus.RUNNING
    error: str | None = None
    residency_version: str
    started_at: str
    finished_at: str | None = None
    config: dict[str, Any]
    baseline: RoundResult | None = None
    rounds: list[RoundResult] = []
    in_flight: InFlight | None = None
    final: FinalResult | None = None
    privacy: dict[str, CountryPrivacy] = {}
    resumed: list[Resumed] = []  # the earlier runs this one continues, oldest first
    resumed_as: str | None = None  # set on an interrupted run: the run that continued it

    def write(self, path: Path) -> None:
        """Write atomically: a temp file in the same folder, then rename."""
        write_atomic(path, self.model_dump_json(indent=2))
