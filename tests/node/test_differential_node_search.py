"""No membership oracle, searched: a node answers D and D plus one alike, whatever it is sent.

Issue 24, point 9, at length (``tests/differential_jobs.py``): every other kind of job on a
person-level pair, every awkward kind of record in a plain round, and a hypothesis search over
every plan field a launcher signs, hostile global weights and feature transforms, replays and
unconfirmed rounds, each message seconds. The short form is in the unit tier
(``tests/unit/test_differential_node.py``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from differential import AWKWARD, NEW_PEOPLE
from differential_jobs import (
    JOBS,
    REFINED,
    TRANSFORMS,
    WEIGHTS,
    check_pair,
    check_person_level_pair,
    check_plain_round,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]

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


@pytest.mark.node
@pytest.mark.parametrize("person_kind", list(NEW_PEOPLE))
@pytest.mark.parametrize("job_kind", [kind for kind in JOBS if kind not in ("head", "release")])
def test_a_person_level_node_answers_d_and_d_plus_one_person_alike(
    tmp_path: Path, job_kind: str, person_kind: str
) -> None:
    check_person_level_pair(tmp_path, job_kind, person_kind)


@pytest.mark.node
@pytest.mark.parametrize("record_kind", [kind for kind in AWKWARD if kind != "unknown label"])
def test_a_plain_round_answers_d_and_d_plus_one_record_alike(
    tmp_path: Path, record_kind: str
) -> None:
    check_plain_round(tmp_path, record_kind)


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
        check_pair(
            Path(folder),
            job_kind=job_kind,
            record_kind=record_kind,
            plan=plan,
            weights=weights,
            transform=transform,
            replay=replay,
            confirm=confirm,
        )
