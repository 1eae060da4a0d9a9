"""No membership oracle: a node answers D and D plus one record alike, whatever it is sent.

The property of issue 24, point 9: for any message a curious or hostile coordinator (or a
launcher it signed for) sends, two nodes whose datasets differ by one record of any awkward
kind give the same observable outcome (reply, refusal code and numbers, or fault), the same
charge, byte-identical non-noised fields and finite noised arrays of the same shapes, with the
node's secret noise fixed for the pair (``tests/differential.py``). Hostile messages cover
every plan field a launcher signs, the global weights (huge, infinite, NaN), the feature
transform after a release (subnormal, huge), label sets and column names, schedules and
replays. The short form (a plain round per kind of record; the filed unknown-label case in
the unit tier) and the long hypothesis search (node tier) both run in CI.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from differential import (
    AWKWARD,
    NEW_PEOPLE,
    assert_indistinguishable,
    pair_nodes,
    pair_person_nodes,
    query_pair,
    round_pair,
)
from residency.common.config.job import Job, load_job
from residency.common.config.round_plan import feature_transform_bytes
from residency.common.model import ModelSpec, build_classifier, round_one_arrays, trainable_state
from toy_federation import separable_rows, write_toy_job

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]

WIDTH = 32  # the tiny BERT's hidden size
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
PLANS = st.fixed_dictionaries(
    {},
    optional={
        "target-epsilon": st.sampled_from([1e-12, 0.1, 1.0, 8.0, 100.0]),
        "delta": st.sampled_from([1e-9, 1e-5, 1e-4, 0.03]),
        "max-grad-norm": st.sampled_from([1e-6, 1.0, 1e4]),
        "learning-rate": st.sampled_from([1e-6, 0.1, 10.0]),
        "batch-size": st.sampled_from([1, 8, 41, 10_000]),
        "local-epochs": st.sampled_from([1, 2]),
        "step-rule": st.sampled_from(["fixed", "noise"]),
        "optimizer": st.sampled_from(["sgd", "adamw"]),
        "labels": st.sampled_from(
            [["obj", "neg", "pos"], ["pos", "neg", "obj", "zzz-not-a-label"], ["pos", "neg"]]
        ),
        "text-column": st.sampled_from(["label", "note"]),
        "label-column": st.sampled_from(["text", "note"]),
        "seed": st.sampled_from([0, -1, 2**62]),
        "accountant": st.sampled_from(["prv", "rdp"]),
        "warm-start-share": st.sampled_from([1e-9, 0.5, 0.999]),
        "max-length": st.sampled_from([8, 512]),
        "transfer-dtype": st.sampled_from(["float32", "float16"]),
        "lora-rank": st.sampled_from([1, 256]),
        "lora-alpha": st.sampled_from([1, 4096]),
        "rounds": st.sampled_from([1, 3]),
        "refine": st.booleans(),
        "job-ended": st.booleans(),  # a query that frees the job's hold; a round refuses it
    },
)


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


def _check_pair(
    root: Path,
    *,
    job_kind: str,
    record_kind: str,
    plan: dict[str, Any],
    weights: str,
    transform: str,
    replay: bool,
    confirm: bool = True,
    person_kind: str | None = None,
) -> list[str]:
    """Check every round of the job on the pair; what the node over D answered to each."""
    job = _job(root, JOBS[job_kind])
    pair = (
        pair_nodes(root / "nodes", ROWS, record_kind)
        if person_kind is None
        else pair_person_nodes(root / "nodes", PERSON_ROWS, person_kind)
    )
    rounds = job.train.server_rounds + (job_kind == REFINED)
    answers: list[str] = []
    for server_round in range(1, rounds + 1):
        overrides = dict(plan)
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


@pytest.mark.parametrize("person_kind", list(NEW_PEOPLE))
@pytest.mark.parametrize(
    "job_kind",
    [  # one DP-SGD kind and the release in the fast tier; the others with the node tier
        pytest.param(
            kind, marks=pytest.mark.unit if kind in ("head", "release") else pytest.mark.node
        )
        for kind in JOBS
    ],
)
def test_a_person_level_node_answers_d_and_d_plus_one_person_alike(
    tmp_path: Path, job_kind: str, person_kind: str
) -> None:
    """Under ``privacy_unit = "person"`` the neighbour is a whole person, many records and all."""
    answers = _check_pair(
        tmp_path,
        job_kind=job_kind,
        record_kind="duplicate",
        plan={},
        weights="as sent",
        transform="public",
        replay=True,
        person_kind=person_kind,
    )
    assert answers[0] == "reply"  # the node trained (or released): a refusal proves nothing


@pytest.mark.parametrize(
    "record_kind",
    [  # the filed oracle in the fast tier; the other kinds with the node tier
        pytest.param(kind, marks=pytest.mark.unit if kind == "unknown label" else pytest.mark.node)
        for kind in AWKWARD
    ],
)
def test_a_plain_round_answers_d_and_d_plus_one_record_alike(
    tmp_path: Path, record_kind: str
) -> None:
    _check_pair(
        tmp_path,
        job_kind="head",
        record_kind=record_kind,
        plan={},
        weights="as sent",
        transform="public",
        replay=False,
    )


@pytest.mark.node
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same messages on every run, so CI is repeatable
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(
    job_kind="warm start",
    record_kind="maximal length",
    plan={},
    weights="as sent",
    transform="tiny scale",
    replay=False,
    confirm=True,
)
@example(
    job_kind="lora warm start",
    record_kind="extreme tokens",
    plan={"refine": True},
    weights="as sent",
    transform="tiny scale",
    replay=False,
    confirm=False,
)
@example(
    job_kind=REFINED,
    record_kind="duplicate",
    plan={},
    weights="as sent",
    transform="public",
    replay=True,
    confirm=True,
)
@example(
    job_kind="head",
    record_kind="extreme tokens",
    plan={},
    weights="one entry at FLT_MAX",
    transform="public",
    replay=False,
    confirm=False,
)
@example(
    job_kind="release",
    record_kind="unknown label",
    plan={"labels": ["pos", "neg"]},
    weights="as sent",
    transform="public",
    replay=True,
    confirm=False,
)
@given(
    job_kind=st.sampled_from(list(JOBS)),
    record_kind=st.sampled_from(list(AWKWARD)),
    plan=PLANS,
    weights=st.sampled_from(WEIGHTS),
    transform=st.sampled_from(list(TRANSFORMS)),
    replay=st.booleans(),
    confirm=st.booleans(),
)
def test_no_message_tells_d_from_d_plus_one_record(
    job_kind: str,
    record_kind: str,
    plan: dict[str, Any],
    weights: str,
    transform: str,
    replay: bool,
    confirm: bool,
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _check_pair(
            Path(folder),
            job_kind=job_kind,
            record_kind=record_kind,
            plan=plan,
            weights=weights,
            transform=transform,
            replay=replay,
            confirm=confirm,
        )
