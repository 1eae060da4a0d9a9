"""The coordinator's held-out choice: which round's model to keep, whether to refine a release.

The coordinator's own labelled test set is split once, by a hash of each text, into a
held-out part (``[data] validation_share``) and the part every reported score reads. The
held-out part only chooses; it is never reported, so a choice made on it cannot flatter the
reported scores. Choosing costs the nodes nothing: it reads the global models, which are
already post-processing of what the nodes released.

Two choices, measured with ``bench/pipeline_replay.py`` on real corpora (docs/performance.md):

- **The kept model** is the round with the best held-out accuracy, not blindly the last: a
  noisy step can undo a round, and where a few hundred records per class already give good
  class means, training can fall below the release that started it.
- **Refine or train on.** In a warm-started job the first training round is a test: if its
  model scores below the release's on the held-out part, and the release there clearly beats
  a constant guess (:data:`RELEASE_MARGIN`), the budget left goes to the release again
  instead (``refine`` in the round plan), and the two releases are combined per node by
  their noise; the job then ends. Where class means already separate the classes (BBC topics
  at a few hundred records per country) that recovers most of what a release spending the
  whole epsilon reaches; where training pays (thousands of records, countries writing other
  languages) the first round already shows it and the job trains on.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def held_out_rows(texts: Sequence[str], share: float) -> list[bool]:
    """For each test text, whether it is held out: a fixed function of the text alone.

    A hash, not a position, so reordering or extending the test file moves no text from one
    part to the other, and duplicates land together.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"validation share {share} outside [0, 1)")
    bound = int(share * 2**64)
    return [
        int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") < bound
        for text in texts
    ]


def split_rows(texts: Sequence[str], share: float) -> list[bool]:
    """:func:`held_out_rows`, except that nothing is held out when either part would be empty.

    A choice needs rows to read and a report needs rows to score.
    """
    held = held_out_rows(texts, share)
    return held if any(held) and not all(held) else [False] * len(held)


@dataclass
class KeptModel:
    """The best model so far by held-out accuracy: its round, score and trainable tensors."""

    round: int
    accuracy: float
    state: dict[str, torch.Tensor]


def better(kept: KeptModel | None, accuracy: float) -> bool:
    """Whether a later model scoring ``accuracy`` replaces ``kept``: at least as good.

    Ties go to the later model: with the step capped, rounds improve on average, and a few
    hundred held-out rows tie often (measured on spam at epsilon 8: 0.952 with ties to the
    later round, 0.947 with ties to the earlier).
    """
    return kept is None or accuracy >= kept.accuracy


RELEASE_MARGIN = 2.0
"""Standard errors by which the release must beat the majority class before it is refined.

A release no better than a constant guess has class means buried in its noise, and a second
release of the budget left only halves that noise; training on gets further. Measured
(``bench/person_level.py``, ``bench/pipeline_replay.py``; docs/performance.md)."""


def refines(
    release_accuracy: float,
    trained_accuracy: float,
    *,
    majority: float,
    rows: int,
    margin: float = RELEASE_MARGIN,
) -> bool:
    """After a warm start's first training round: spend the rest on the release instead?

    Yes when the trained model scores below the release's on the held-out part and the
    release there beats ``majority`` (the share of the held-out part's most frequent class,
    what a constant guess scores) by ``margin`` standard errors of an accuracy on ``rows``
    rows: only a release whose class means stand out of its noise is worth a second one.
    """
    if trained_accuracy >= release_accuracy:
        return False
    spread = math.sqrt(majority * (1.0 - majority) / max(rows, 1))
    return release_accuracy > majority + margin * spread


def majority_share(labels: Sequence[int]) -> float:
    """The share of the most frequent label: a constant guess's accuracy (0 without rows)."""
    if not labels:
        return 0.0
    return max(Counter(labels).values()) / len(labels)
