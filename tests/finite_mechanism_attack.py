"""Issue 24.1's attack: a toy job on D and on D plus a candidate record, and the transform sent.

A coordinator that knows the data less one candidate record picks numbers that overflow for
that record alone. The bounds, and the mechanism fed such numbers directly, are checked in the
unit tier (``tests/unit/test_finite_mechanism.py``), whole rounds on D and D plus the candidate
in the node tier (``tests/node/test_finite_mechanism_rounds.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from residency.common.config.job import Job, load_job
from residency.common.config.round_plan import feature_transform_bytes
from toy_federation import write_toy_job

FLT_MAX = float(np.finfo(np.float32).max)
EXAMPLES = 60
CANDIDATE = ("zqx candidate record wvk", "pos")


def candidate_job(tmp_path: Path, train: str) -> Job:
    """A one-country job of ``train`` over D (``de.csv``), beside D plus the candidate."""
    path = write_toy_job(
        tmp_path / "job", countries=("DE",), examples=EXAMPLES, schedule=False, train=train
    )
    plus = tmp_path / "job" / "de-plus.csv"  # D + the candidate record
    shutil.copy(tmp_path / "job" / "de.csv", plus)
    with plus.open("a", encoding="utf-8") as handle:
        handle.write(",".join(CANDIDATE) + "\n")
    return load_job(path)


def transform_of(centre: np.ndarray, scale: np.ndarray) -> dict[str, bytes]:
    """The plan field that sends ``centre`` and ``scale`` as the feature transform."""
    return {"feature-transform": feature_transform_bytes(centre, scale)}
