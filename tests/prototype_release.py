"""The toy jobs of the prototype-release tests: one country, one round, a release by default.

A single release is checked in the unit tier (``tests/unit/test_prototype_round.py``), releases
composed with DP-SGD rounds in the node tier (``tests/node/test_prototype_round_composition.py``).
"""

from __future__ import annotations

from pathlib import Path

from residency.common.config.job import Job, load_job
from toy_federation import write_toy_job

EXAMPLES = 60


def one_round_job(tmp_path: Path, update: str = "prototypes", name: str = "job") -> Job:
    """A DE-only, one-round job of ``update`` over ``EXAMPLES`` records, in ``tmp_path / name``."""
    path = write_toy_job(
        tmp_path / name,
        countries=("DE",),
        rounds=1,
        examples=EXAMPLES,
        train=f'update = "{update}"',
    )
    return load_job(path)
