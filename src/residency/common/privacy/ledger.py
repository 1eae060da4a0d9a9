"""A hash-chained, append-only ledger of privacy events, each entry signed by its keeper.

The coordinator keeps one for every run it coordinates (each node's signed record, each
refusal, run start and end); every node keeps its own of every charge it made and record it
signed. Each entry holds the previous entry's hash and an Ed25519 signature over its own hash,
so an edit, deletion, reordering or insertion anywhere breaks the chain at a numbered entry.
Entries are JSON lines, appended under an exclusive lock and fsynced.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from residency.common.clock import now
from residency.common.privacy.canonical import canonical_json
from residency.common.privacy.record import Hex64, SignedRecord
from residency.common.privacy.signing import Signer, verify

log = logging.getLogger("residency.ledger")

LEDGER_FILE = "ledger.jsonl"
GENESIS = "0" * 64
Detail = dict[str, str | int | float | bool | None]


class EntryKind(StrEnum):
    """What an entry records."""

    RUN_STARTED = "run-started"
    RECORD = "record"  # a node's signed privacy record, as received with its update
    REFUSAL = "refusal"  # a node declined a round (budget or policy), in its own words
    RUN_FINISHED = "run-finished"
    CHARGE = "charge"  # node ledgers: a round's cost, written before training
    BUDGET_RESET = "budget-reset"  # node ledgers: the operator opened a new dataset account
    UNCONFIRMED = "unconfirmed"  # a node sent no valid record in time; it may have charged


class EntryBody(BaseModel):
    """What an entry says; its hash is over exactly these fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    index: Annotated[int, Field(ge=0)]
    prev: Hex64
    kind: EntryKind
    at: str
    signer: Hex64
    run: str | None = None
    job: str | None = None
    country: str | None = None
    round: int | None = None
    record: SignedRecord | None = None
    received_sha256: Hex64 | None = None
    reason: str | None = None
    detail: Detail = {}

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the body."""
        return hashlib.sha256(canonical_json(self).encode("ascii")).hexdigest()


class LedgerEntry(EntryBody):
    """A body plus its hash and the keeper's signature over the hash."""

    hash: Hex64
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]

    @property
    def body(self) -> EntryBody:
        """The signed part."""
        return EntryBody.model_validate(self.model_dump(exclude={"hash", "signature"}))

    def signature_valid(self) -> bool:
        """Whether ``signature`` is ``signer``'s over ``hash``."""
        return verify(self.signer, self.hash.encode("ascii"), self.signature)


class Ledger:
    """Append entries to a ledger file as one keeper (coordinator or node)."""

    def __init__(self, path: Path, signer: Signer) -> None:
        self.path = path
        self.signer = signer
        path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[int]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # runs sharing a coordinator append in turn
            yield fd
        finally:
            os.close(fd)  # closing releases the lock

    def _set_aside_torn_tail(self, fd: int) -> None:
        """A crash mid-write leaves a partial last line; keep its bytes apart, then drop them."""
        size = os.fstat(fd).st_size
        if size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        aside = self.path.with_name(f"{self.path.name}.torn-{os.getpid()}-{size}")
        aside.write_bytes(data[cut:])
        os.ftruncate(fd, cut)
        log.warning("ledger %s: incomplete last entry moved to %s", self.path, aside)

    def _head(self) -> tuple[int, str]:
        """Index and hash the next entry must follow."""
        last = _last_line(self.path)
        if last is None:
            return 0, GENESIS
        entry = LedgerEntry.model_validate_json(last)
        return entry.index + 1, entry.hash

    def head(self) -> tuple[int, str]:
        """(entries so far, hash of the last): the position a checkpoint names."""
        with self._locked():
            return self._head()

    def append(self, kind: EntryKind, **fields: object) -> LedgerEntry:
        """Sign and append one entry; durable (fsynced) when this returns."""
        with self._locked() as fd:
            self._set_aside_torn_tail(fd)
            index, prev = self._head()
            body = EntryBody.model_validate(
                {
                    "index": index,
                    "prev": prev,
                    "kind": kind,
                    "at": now(),
                    "signer": self.signer.public_hex,
                    **fields,
                }
            )
            digest = body.digest()
            entry = LedgerEntry.model_validate(
                {
                    **body.model_dump(),
                    "hash": digest,
                    "signature": self.signer.sign(digest.encode("ascii")),
                }
            )
            os.write(fd, (canonical_json(entry) + "\n").encode("ascii"))
            os.fsync(fd)
            return entry


def _last_line(path: Path) -> bytes | None:
    """The last complete line of ``path`` without reading the whole file."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        if end == 0:
            return None
        block = 4096
        pos = end
        tail = b""
        while pos > 0:
            pos = max(0, pos - block)
            handle.seek(pos)
            tail = handle.read(end - pos)
            if tail.rstrip(b"\n").count(b"\n") >= 1 or pos == 0:
                break
            block *= 2
        lines = tail.rstrip(b"\n").split(b"\n")
        return lines[-1] if lines and lines[-1] else None


def read_lines(path: Path) -> list[str]:
    """Every line of a ledger file, as written (the verifier parses them one by one)."""
    return path.read_text("ascii", errors="replace").splitlines()
