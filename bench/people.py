"""People for the person-level benches: a corpus's records dealt to people with skewed counts.

Real partners' people hold very different numbers of records (a patient with one note, another
with forty), so the benches draw each person's count from a power law, P(n) ~ n^-1.5 over 1 to
50 (median 2, mean about 5.5), and give most of a person's records one label, as a patient's
notes share a diagnosis.
"""

from __future__ import annotations

import numpy as np

MAX_RECORDS = 50
EXPONENT = 1.5


def record_counts(people: int, generator: np.random.Generator) -> np.ndarray:
    """Each person's record count: 1 to ``MAX_RECORDS``, P(n) ~ n^-EXPONENT."""
    sizes = np.arange(1, MAX_RECORDS + 1)
    odds = sizes**-EXPONENT
    return generator.choice(sizes, size=people, p=odds / odds.sum())


def deal(
    labels: np.ndarray,
    pool: list[int],
    people: int,
    *,
    own_label: float,
    generator: np.random.Generator,
) -> list[list[int]]:
    """People's records (corpus indices) drawn without replacement from ``pool``."""
    by_label = {k: [i for i in pool if labels[i] == k] for k in np.unique(labels[pool])}
    for rows in by_label.values():
        generator.shuffle(rows)
    shares = np.array([len(by_label[k]) for k in by_label], dtype=float)
    keys = list(by_label)
    dealt = []
    for count in record_counts(people, generator):
        dominant = keys[generator.choice(len(keys), p=shares / shares.sum())]
        mine: list[int] = []
        for _ in range(count):
            label = (
                dominant if generator.random() < own_label else keys[generator.integers(len(keys))]
            )
            if not by_label[label]:
                label = max(keys, key=lambda k: len(by_label[k]))
            if not by_label[label]:
                break
            mine.append(by_label[label].pop())
        if mine:
            dealt.append(mine)
    return dealt
