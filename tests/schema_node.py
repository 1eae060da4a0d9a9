"""A node whose data holds extra rows a job may not expect, and what it was charged.

How a node declares and reads its data's schema is checked in the unit tier
(``tests/unit/test_node_schema.py``), one unusable record through whole rounds in the node
tier (``tests/node/test_node_schema_rounds.py``).
"""

from __future__ import annotations

from pathlib import Path

from node_harness import node_file
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.common.config.job import Job, load_job
from toy_federation import separable_rows, write_rows, write_toy_job

EXAMPLES = 40


def node_with_rows(root: Path, *extra_rows: tuple[str, str]) -> tuple[Job, Path]:
    """A toy job over DE's 40 rows plus ``extra_rows``, and a node.toml declaring its schema."""
    job = load_job(write_toy_job(root / "job", countries=("DE",), examples=EXAMPLES, rounds=1))
    rows = separable_rows(EXAMPLES, 0)
    write_rows(root / "job" / "de.csv", [*rows[:7], *extra_rows, *rows[7:]])
    return job, node_file(root, 100.0)


def charges_of(root: Path) -> list[tuple[object, ...]]:
    """Each charge's privacy cost: its step (noise, sample rate, steps), delta and accountant."""
    store = BudgetStore(root / "state" / STORE_FILE)
    return [(charge.step, charge.delta, charge.accountant) for charge in store.charges()]
