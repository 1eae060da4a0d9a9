"""Whole jobs on a differential pair: every round a (hostile) coordinator sends, D against D'.

``tests/differential.py`` runs one message on the pair; this runs a toy job of each kind round
after round, confirming first and replaying when asked, with the global weights and the feature
transform a hostile coordinator may choose. The short form is in the unit tier
(``tests/unit/test_differential_node.py``), the other kinds and the hypothesis search of every
plan field in the node tier (``tests/node/test_differential_node_search.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from differential import (
    assert_indistinguishable,
    pair_nodes,
    pair_person_nodes,
    query_pair,
    round_pair,
)
from residency.common.config.job import Job, load_job
from residency.common.config.round_plan import feature_transform_bytes
from residency.common.model import ModelSpec, build_classifier, round_one_arrays, trainable_state
from toy_federation import WIDTH, separable_rows, write_toy_job

ROWS = separable_rows(40, 0)
PERSON_ROWS = [(text, label, f"person-{i % 13}") for i, (text, label) in enumerate(ROWS)]
"""13 people with 3 or 4 records each, interleaved in the file as real exports are."""
JOBS = {
    "head": 'update = "head"',
    "lora": 'update = "lora"',
    "lora-fa": 'update = "lora-fa"',
    "release": 'update = "prototypes"',
    "warm start": 'update = "head"\nwarm_start = "prototypes"',
    "refined warm start": 'update = "head"\nwarm_start = "prototypes"',
    "lora warm start": 'update = "lora"\nwarm_start = "prototypes"',
}
REFINED = "refined warm start"  # round 3 asks the release again with what the job has left
FLT_MAX = float(np.finfo(np.float32).max)
WEIGHTS = ("as sent", "huge", "inf", "nan", "one entry at FLT_MAX")
TRANSFORMS = {
    "public": (np.zeros(WIDTH), np.ones(WIDTH)),
    "subnormal scale": (np.full(WIDTH, -2.0), np.r_[[1e-42], np.ones(WIDTH - 1)]),
    "tiny scale": (np.full(WIDTH, -2.0), np.r_[[3.0 / FLT_MAX], np.ones(WIDTH - 1)]),
    "huge centre": (np.r_[[1e30], np.zeros(WIDTH - 1)], np.ones(WIDTH)),
}


def _job(root: Path, train: str) -> Job:
    rounds = 2 if "warm_start" in train else 1
    return load_job(
        write_toy_job(
            root / "job", countries=("DE",), examples=len(ROWS), rounds=rounds, train=train
        )
    )


def _hostile(arrays: dict[str, np.ndarray], how: str) -> dict[str, np.ndarray]:
    """The coordinator's global weights, with one tensor made hostile."""
    if how == "as sent" or not arrays:
        return arrays
    name = sorted(arrays)[-1]
    tensor = arrays[name].copy()
    if how == "huge":
        tensor = tensor * 1e30 + 1e30
    elif how == "inf":
        tensor[...] = np.inf
    elif how == "nan":
        tensor[...] = np.nan
    else:
        tensor.flat[0] = FLT_MAX
    return {**arrays, name: tensor.astype(arrays[name].dtype)}


def _weights(job: Job, server_round: int) -> dict[str, np.ndarray]:
    model = build_classifier(ModelSpec.from_job(job))
    if server_round == 1:
        return round_one_arrays(model, job.train.round_update(1))
    return {name: tensor.numpy() for name, tensor in trainable_state(model).items()}


def check_pair(
    root: Path,
    *,
    job_kind: str,
    record_kind: str,
    replay: bool,
    plan: dict[str, Any] | None = None,
    weights: str = "as sent",
    transform: str = "public",
    confirm: bool = True,
    person_kind: str | None = None,
) -> list[str]:
    """Check every round of the job on the pair; what the node over D answered to each.

    Left out, ``plan``, ``weights`` and ``transform`` are what an honest coordinator sends.
    """
    job = _job(root, JOBS[job_kind])
    pair = (
        pair_nodes(root / "nodes", ROWS, record_kind)
        if person_kind is None
        else pair_person_nodes(root / "nodes", PERSON_ROWS, person_kind)
    )
    rounds = job.train.server_rounds + (job_kind == REFINED)
    answers: list[str] = []
    for server_round in range(1, rounds + 1):
        overrides = dict(plan or {})
        if server_round > 1:  # the head after a release reads a coordinator-chosen transform
            overrides["feature-transform"] = feature_transform_bytes(*TRANSFORMS[transform])
        refining = job_kind == REFINED and server_round == rounds
        if refining:
            overrides["refine"] = True
        arrays = _hostile(_weights(job, 1 if refining else server_round), weights)
        if confirm:  # the coordinator confirms the job first (and a hostile one, every round)
            asked = query_pair(job, pair, run_id=1, server_round=server_round, overrides=overrides)
            assert_indistinguishable(*asked)
        outcomes = round_pair(
            job, pair, run_id=1, server_round=server_round, overrides=overrides, arrays=arrays
        )
        assert_indistinguishable(*outcomes)
        answers.append(outcomes[0].kind)
        if replay:  # the same signed job again, under another run
            again = round_pair(
                job,
                pair,
                run_id=2,
                server_round=server_round,
                overrides=overrides,
                arrays=arrays,
                nonce=f"{1:032x}",
            )
            assert_indistinguishable(*again)
    return answers


def check_person_level_pair(root: Path, job_kind: str, person_kind: str) -> None:
    """Under ``privacy_unit = "person"`` the neighbour is a whole person, many records and all."""
    answers = check_pair(
        root,
        job_kind=job_kind,
        record_kind="duplicate",
        replay=True,
        person_kind=person_kind,
    )
    assert answers[0] == "reply"  # the node trained (or released): a refusal proves nothing


def check_plain_round(root: Path, record_kind: str) -> None:
    """A head job's one round, as sent, on D and D plus one record of ``record_kind``."""
    check_pair(root, job_kind="head", record_kind=record_kind, replay=False)
