"""A toy job a release warm-starts, and the plan fields its coordinator sends after round 1.

The config, the split of ε and each round on its own are checked in the unit tier
(``tests/unit/test_warm_start.py``), whole jobs through the node in the node tier
(``tests/node/test_warm_start_rounds.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from residency.common.config.job import Job, load_job
from residency.common.config.round_plan import feature_transform_bytes
from residency.common.model import ModelSpec, build_classifier, trainable_state
from toy_federation import WIDTH, write_toy_job

EXAMPLES = 60
WARM = 'update = "head"\nwarm_start = "prototypes"'


def warm_start_job(tmp_path: Path, train: str = WARM) -> Job:
    """A one-country job of ``train``, on the pipeline's default schedule."""
    path = write_toy_job(
        tmp_path / "job", countries=("DE",), examples=EXAMPLES, schedule=False, train=train
    )
    return load_job(path)


def feature_transform() -> dict[str, bytes]:
    """The feature transform a coordinator sends with each round after the release."""
    centre = np.full(WIDTH, 0.01, np.float32)
    scale = np.full(WIDTH, 0.2, np.float32)
    return {"feature-transform": feature_transform_bytes(centre, scale)}


def refine_fields() -> dict[str, Any]:
    """The plan fields that ask for the release again, after training began."""
    return feature_transform() | {"refine": True}


def global_arrays(job: Job) -> dict[str, np.ndarray]:
    """The trainable weights of a freshly built model of ``job``, as a coordinator sends them."""
    model = build_classifier(ModelSpec.from_job(job))
    return {name: t.numpy() for name, t in trainable_state(model).items()}
