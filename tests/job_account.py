"""The toy job whose one account the job-account tests follow, and the nonce it is launched with.

How jobs are signed and locked is checked in the unit tier (``tests/unit/test_job_account.py``),
replays under new Flower runs through whole rounds in the node tier
(``tests/node/test_job_account_replays.py``).
"""

from __future__ import annotations

from pathlib import Path

from residency.common.config.job import Job, load_job
from toy_federation import write_toy_job

NONCE = "ab" * 16


def one_country_job(
    tmp_path: Path, update: str = "head", *, rounds: int = 1, extra: str = ""
) -> Job:
    """A DE-only job of ``update`` over 40 records, ``rounds`` long."""
    return load_job(
        write_toy_job(
            tmp_path / "job",
            countries=("DE",),
            rounds=rounds,
            examples=40,
            train=f'update = "{update}"',
            extra=extra,
        )
    )
