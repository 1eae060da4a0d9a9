"""Labelled text records as one immutable value, with a content fingerprint.

A node's training data crosses several hands (reader, tokenizer, trainer, audit log); holding it
as a frozen value that checks itself when built means none of them has to re-validate it, and the
fingerprint lets the audit log say which data a round trained on without recording the data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_FINGERPRINT_DOMAIN = b"residency.labeled-texts.v1\x00"


@dataclass(frozen=True)
class LabeledTexts:
    """Texts with one class label each, as read from one file.

    Labels are stored as indices into ``label_names`` so that the model's output layer and the
    data agree on one fixed order: the job's label list, not the order labels happen to appear
    in a country's file.

    Attributes:
        texts: The texts, in file order.
        labels: For each text, an index into ``label_names``.
        label_names: The job's label set, in the job's order; indices refer to this order.
        source: The file the records came from; kept for messages, not part of the fingerprint.
        people: For each text, the id of the person it is about (person-level DP), or None
            when the node's privacy unit is the record.
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    source: Path
    people: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"LabeledTexts from {self.source}: {len(self.texts)} texts but "
                f"{len(self.labels)} labels; every text needs exactly one label"
            )
        if self.people is not None and len(self.people) != len(self.texts):
            raise ValueError(
                f"LabeledTexts from {self.source}: {len(self.texts)} texts but "
                f"{len(self.people)} person ids; every text needs exactly one"
            )
        if not self.label_names:
            raise ValueError(f"LabeledTexts from {self.source}: label_names is empty")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(
                f"LabeledTexts from {self.source}: label_names has duplicates "
                f"{sorted(_duplicates(self.label_names))}; indices would be ambiguous"
            )
        count = len(self.label_names)
        for position, label in enumerate(self.labels):
            if not 0 <= label < count:
                raise ValueError(
                    f"LabeledTexts from {self.source}: label index {label} at position "
                    f"{position} is outside 0..{count - 1} ({count} label names)"
                )

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        """Return a SHA-256 hex digest of the content: texts, labels and label names.

        The source path is left out on purpose, so the same data read from a CSV, a JSONL or a
        Parquet file, or from a different folder, gets the same fingerprint. Every string is
        length-prefixed, so no two different contents share an encoding.
        """
        digest = hashlib.sha256(_FINGERPRINT_DOMAIN)
        _hash_strings(digest.update, self.label_names)
        digest.update(len(self.labels).to_bytes(8, "big"))
        for label in self.labels:
            digest.update(label.to_bytes(8, "big"))
        _hash_strings(digest.update, self.texts)
        if self.people is not None:  # who each record is about decides what a round reads
            digest.update(b"people")
            _hash_strings(digest.update, self.people)
        return digest.hexdigest()


def _hash_strings(update: Callable[[bytes], object], values: tuple[str, ...]) -> None:
    """Feed a counted sequence of length-prefixed UTF-8 strings to a digest's ``update``."""
    update(len(values).to_bytes(8, "big"))
    for value in values:
        encoded = value.encode("utf-8", "surrogatepass")
        update(len(encoded).to_bytes(8, "big"))
        update(encoded)


def _duplicates(values: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    repeated: set[str] = set()
    for value in values:
        (repeated if value in seen else seen).add(value)
    return repeated
