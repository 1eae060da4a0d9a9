"""The global model after each completed round, kept before the next round's messages leave.

A coordinator that dies mid-run loses nothing a round completed: ``results.json`` holds the
rounds' results, the ledger their privacy events, and this checkpoint the global trainable
arrays (with a warm start's feature standardisation), the best model so far by held-out
accuracy, and the ledger position they follow. Written atomically and overwritten each
round; ``coordinator start`` resumes an interrupted run from it (:mod:`.recovery`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict
from safetensors.numpy import load, save

from residency.common.clock import now
from residency.common.files import write_atomic

CHECKPOINT_DIR = "checkpoint"
ARRAYS_FILE = "global.safetensors"
KEPT_FILE = "kept.safetensors"
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
    kept_round: int | None = None  # the best round by held-out accuracy, in kept.safetensors
    kept_accuracy: float | None = None
    kept_sha256: str | None = None


@dataclass(frozen=True)
class Saved:
    """A checkpoint read back: the global arrays, a warm start's (centre, scale), the kept model."""

    checkpoint: Checkpoint
    arrays: dict[str, np.ndarray]
    transform: tuple[np.ndarray, np.ndarray] | None
    kept: dict[str, np.ndarray] | None


def save_checkpoint(
    out_dir: Path,
    server_round: int,
    arrays: dict[str, np.ndarray],
    *,
    feature_transform: bytes = b"",
    ledger_position: tuple[int, str] | None = None,
    kept: tuple[int, float, dict[str, np.ndarray]] | None = None,
) -> Checkpoint:
    """Write the arrays, then the state naming their hashes: a torn set never matches.

    ``kept`` is (round, held-out accuracy, arrays) of the best model so far; its file is
    rewritten only when that round is this one.
    """
    folder = out_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    data = _tensors(arrays, feature_transform)
    write_atomic(folder / ARRAYS_FILE, data)
    kept_sha256 = None
    if kept is not None:
        kept_round, _, kept_arrays = kept
        path = folder / KEPT_FILE
        if kept_round == server_round or not path.exists():
            write_atomic(path, _tensors(kept_arrays, b""))
        kept_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    checkpoint = Checkpoint(
        round=server_round,
        arrays_sha256=hashlib.sha256(data).hexdigest(),
        ledger_entries=None if ledger_position is None else ledger_position[0],
        ledger_head=None if ledger_position is None else ledger_position[1],
        written_at=now(),
        kept_round=None if kept is None else kept[0],
        kept_accuracy=None if kept is None else kept[1],
        kept_sha256=kept_sha256,
    )
    write_atomic(folder / STATE_FILE, checkpoint.model_dump_json(indent=2))
    return checkpoint


def _tensors(arrays: dict[str, np.ndarray], feature_transform: bytes) -> bytes:
    tensors = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    if feature_transform:
        tensors[TRANSFORM] = np.frombuffer(feature_transform, dtype="<f4").reshape(2, -1)
    return save(tensors)


def _read(path: Path, sha256: str) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path}: the arrays are not the ones {STATE_FILE} names")
    return load(data)


def load_checkpoint(out_dir: Path) -> Saved:
    """The last checkpoint and its arrays; ``ValueError`` if they do not belong together."""
    folder = out_dir / CHECKPOINT_DIR
    checkpoint = Checkpoint.model_validate_json((folder / STATE_FILE).read_text("utf-8"))
    arrays = _read(folder / ARRAYS_FILE, checkpoint.arrays_sha256)
    rows = arrays.pop(TRANSFORM, None)
    kept = None
    if checkpoint.kept_sha256 is not None:
        kept = _read(folder / KEPT_FILE, checkpoint.kept_sha256)
    transform = None if rows is None else (rows[0], rows[1])
    return Saved(checkpoint, arrays, transform, kept)
