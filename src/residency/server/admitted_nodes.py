"""Which country each admitted node key belongs to (Flower stores keys, not countries)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from residency.common.clock import now
from residency.common.country import CountryCode
from residency.common.files import write_atomic


class AdmittedNode(BaseModel):
    """One admitted key: its Flower node id, the country it speaks for, its fingerprint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str
    country: CountryCode
    key_sha256: str
    admitted_at: str = Field(default_factory=now)


_ADMITTED = TypeAdapter(list[AdmittedNode])


def key_fingerprint(public_key: bytes) -> str:
    """SHA-256 of the key's OpenSSH text (type and base64 body), as both sides can compute."""
    body = b" ".join(public_key.split()[:2])
    return hashlib.sha256(body).hexdigest()


def read_admitted(path: Path) -> list[AdmittedNode]:
    """All admitted nodes, oldest first (an absent file means none)."""
    return _ADMITTED.validate_json(path.read_bytes()) if path.exists() else []


def record_admission(path: Path, node: AdmittedNode) -> None:
    """Append one admission atomically."""
    nodes = [*read_admitted(path), node]
    write_atomic(path, _ADMITTED.dump_json(nodes, indent=2))
