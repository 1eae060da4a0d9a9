"""The global model after each completed round, kept before the next round's messages leave.

A coordinator that dies mid-run loses nothing a round completed: ``results.json`` holds the
rounds' results, the ledger their privacy events, and this checkpoint the global trainable
arrays (with a warm start's feature standardisation) and the ledger position they follow.
Written atomically and overwritten each round; an operator can export it after a failure.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict
from safetensors.numpy import load, save

from residency.common.clock import now
from residency.common.files import write_atomic

CHECKPOINT_DIR = "checkpoint"
ARRAYS_FILE = "global.safetensors"
STATE_FILE = "checkpoint.json"
TRANSFORM = "residency:feature-transform"
"""Reserved tensor name for the (centre, scale) rows a warm-started head reads."""


class Checkpoint(BaseModel):
    """Which round the arrays are the result of, and where the ledger stood then."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    round: int
    arrays_sha256: str
    ledger_entries: int | None
    ledger_head: str | None
    written_at: str


def save_checkpoint(
    out_dir: Path,
    server_round: int,
    arrays: dict[str, np.ndarray],
    *,
    feature_transform: bytes = b"",
    ledger_position: tuple[int, str] | None = None,
) -> Checkpoint:
    """Write the arrays, then the state naming their hash: a torn pair never matches."""
    folder = out_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    if feature_transform:
        tensors[TRANSFORM] = np.frombuffer(feature_transform, dtype="<f4").reshape(2, -1)
    data = save(tensors)
    write_atomic(folder / ARRAYS_FILE, data)
    checkpoint = Checkpoint(
        round=server_round,
        arrays_sha256=hashlib.sha256(data).hexdigest(),
        ledger_entries=None if ledger_position is None else ledger_position[0],
        ledger_head=None if ledger_position is None else ledger_position[1],
        written_at=now(),
    )
    write_atomic(folder / STATE_FILE, checkpoint.model_dump_json(indent=2))
    return checkpoint


def load_checkpoint(out_dir: Path) -> tuple[Checkpoint, dict[str, np.ndarray]]:
    """The last checkpoint and its arrays; ``ValueError`` if they do not belong together."""
    folder = out_dir / CHECKPOINT_DIR
    checkpoint = Checkpoint.model_validate_json((folder / STATE_FILE).read_text("utf-8"))
    data = (folder / ARRAYS_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != checkpoint.arrays_sha256:
        raise ValueError(f"{folder}: the arrays are not the ones checkpoint.json names")
    return checkpoint, load(data)
