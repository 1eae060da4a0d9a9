"""Person-level DP: a person, not a record, is what Poisson sampling draws and clipping bounds.

With ``privacy_unit = "person"`` in ``node.toml`` two datasets are neighbours when they differ
by one person and all of that person's records. Each person keeps at most ``cap`` records
(their first ones in file order, so records beyond the cap never reach a round); DP-SGD samples
people, weighs each of a person's ``n`` records by ``1 / n`` so their loss is the mean over their
records, and sums each person's rows of Opacus' per-sample gradients into one per-person
gradient before clipping (:class:`.dp_sgd.FiniteDPOptimizer`). One person then moves the noisy
sum by at most the clipping norm, exactly what the accountant is told for one record under
record-level DP, so the same accountant at the people's sample rate gives epsilon per person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, TensorDataset


@dataclass(frozen=True)
class People:
    """Each person's rows (indices into the node's records), at most ``cap``, in file order."""

    rows: tuple[tuple[int, ...], ...]
    cap: int

    @classmethod
    def of(cls, owners: Sequence[str], cap: int) -> People:
        """Group records by their person id; each person keeps their first ``cap`` records.

        People come in the order of their first record; a record's position in ``owners`` is
        its row. Which records a person keeps depends on that person's records alone, so
        adding or removing another person changes nobody else's rows.
        """
        if cap < 1:
            raise ValueError("the cap on records per person must be at least 1")
        grouped: dict[str, list[int]] = {}
        for row, owner in enumerate(owners):
            kept = grouped.setdefault(owner, [])
            if len(kept) < cap:
                kept.append(row)
        return cls(tuple(tuple(kept) for kept in grouped.values()), cap)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def kept_rows(self) -> list[int]:
        """Every row some person keeps, person after person (what the round reads)."""
        return [row for person in self.rows for row in person]

    def kept(self, rows: TensorDataset) -> TensorDataset:
        """The rows people keep, person after person (``kept_rows`` of each tensor)."""
        return TensorDataset(*(tensor[self.kept_rows] for tensor in rows.tensors))

    def compacted(self) -> People:
        """The same people over the kept rows alone, numbered in ``kept_rows`` order."""
        rows, start = [], 0
        for person in self.rows:
            rows.append(tuple(range(start, start + len(person))))
            start += len(person)
        return People(tuple(rows), self.cap)

    def kept_weights(self) -> torch.Tensor:
        """``1 / n`` for each kept row of a person who keeps ``n``, aligned with ``kept_rows``.

        What one person adds to a sum of per-record vectors of norm at most 1 is then itself
        of norm at most 1, whatever their record count (the prototypes release).
        """
        return torch.tensor(
            [1.0 / len(person) for person in self.rows for _ in person], dtype=torch.float64
        )


class PeopleData(Dataset[tuple[torch.Tensor, ...]]):
    """One item per person: their rows of ``rows``, stacked (what Opacus samples, one each)."""

    def __init__(self, rows: TensorDataset, people: People) -> None:
        self.rows = rows
        self.people = people

    def __len__(self) -> int:
        return len(self.people)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        kept = torch.tensor(self.people.rows[index], dtype=torch.long)
        return tuple(tensor[kept] for tensor in self.rows.tensors)


def collate_people(batch: Sequence[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """The sampled people's rows one after another, and each row's owner (its person's place)."""
    columns = [torch.cat(parts) for parts in zip(*batch, strict=True)]
    sizes = torch.tensor([len(person[0]) for person in batch], dtype=torch.long)
    owners = torch.repeat_interleave(torch.arange(len(batch)), sizes)
    return (*columns, owners)


def row_weights(owners: torch.Tensor) -> torch.Tensor:
    """``1 / n`` for each of a person's ``n`` rows: a person's loss is the mean of theirs."""
    counts = torch.bincount(owners)
    return 1.0 / counts[owners].to(torch.float32)


def per_person(samples: torch.Tensor, owners: torch.Tensor, people: int) -> torch.Tensor:
    """Sum per-row tensors (Opacus' per-sample gradients) into one row per person."""
    summed = torch.zeros((people, *samples.shape[1:]), dtype=samples.dtype, device=samples.device)
    return summed.index_add_(0, owners.to(samples.device), samples)
