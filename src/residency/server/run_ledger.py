"""The coordinator's ledger of one run: start, every node's signed record, refusals, end.

Entries go to the coordinator's single hash-chained ledger (shared by all its runs); each
update that arrived with a record is kept next to it, named by its hash, so an auditor can
recompute the hash the node signed from the very arrays that were averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safetensors.numpy import save

from residency.common.config.job import Job, pipeline_name
from residency.common.files import write_atomic
from residency.common.privacy.ledger import LEDGER_FILE, EntryKind, Ledger
from residency.common.privacy.signing import load_or_create_signer
from residency.server.record_check import Received

UPDATES_DIR = "updates"


def update_file(folder: Path, digest: str) -> Path:
    """Where the update with hash ``digest`` is kept, in a ledger folder."""
    return folder / UPDATES_DIR / f"{digest}.safetensors"


@dataclass(frozen=True)
class RunLedger:
    """Appends one run's events to the coordinator's ledger in ``folder``."""

    folder: Path
    ledger: Ledger
    run: str
    job: str

    @classmethod
    def open(cls, folder: Path, key: Path, *, run: str, job: str) -> RunLedger:
        """Open the ledger in ``folder``, signing with the coordinator's key at ``key``."""
        signer = load_or_create_signer(key, comment="residency-coordinator-ledger")
        return cls(folder, Ledger(folder / LEDGER_FILE, signer), run, job)

    def started(self, job: Job, *, resumes: str | None = None) -> None:
        """What the run asked for, so refusals and spend can be read against it.

        ``resumes`` names the interrupted run this one continues (the same signed job).
        """
        detail: dict[str, str | int | float] = {
            "countries": ",".join(node.country for node in job.nodes),
            "rounds": job.train.server_rounds,  # a warm start's release is round 1
            "target_epsilon": job.privacy.target_epsilon,
            "delta": job.privacy.delta,
            "accountant": job.privacy.accountant.value,
            "update": pipeline_name(job.train.update, job.train.warm_start),
        }
        if resumes is not None:
            detail["resumes"] = resumes
        self.ledger.append(EntryKind.RUN_STARTED, run=self.run, job=self.job, detail=detail)

    def record(self, got: Received, *, averaged: bool, reason: str | None) -> None:
        """A node's signed record, the hash of what arrived, and whether it was averaged."""
        path = update_file(self.folder, got.received_sha256)
        if not path.exists():
            write_atomic(path, save(got.arrays))
        self.ledger.append(
            EntryKind.RECORD,
            run=self.run,
            job=self.job,
            country=got.record.country,
            round=got.record.round,
            record=got.signed,
            received_sha256=got.received_sha256,
            reason=reason,
            detail={"averaged": averaged},
        )

    def _node_round(self, kind: EntryKind, country: str, server_round: int, reason: str) -> None:
        self.ledger.append(
            kind, run=self.run, job=self.job, country=country, round=server_round, reason=reason
        )

    def refusal(self, country: str, server_round: int, reason: str) -> None:
        """A node declined a round before any charge; the reason as rendered from its code."""
        self._node_round(EntryKind.REFUSAL, country, server_round, reason)

    def unconfirmed(self, country: str, server_round: int, reason: str) -> None:
        """A node was sent the round and no valid signed record came back in time.

        The node may have charged its budget (it charges before it trains), so the auditor is
        told here why its record, which the node's own ledger holds, is not in this one.
        """
        self._node_round(EntryKind.UNCONFIRMED, country, server_round, reason)

    def finished(self, status: str, error: str | None) -> None:
        """How the run ended."""
        self.ledger.append(
            EntryKind.RUN_FINISHED,
            run=self.run,
            job=self.job,
            reason=error,
            detail={"status": status},
        )
