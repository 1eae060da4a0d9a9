"""Nothing is charged that cannot count: a plan search and a race, through whole rounds.

Any plan a coordinator sends is refused uncharged or trained with a valid record (a hypothesis
search through the ClientApp), and two node processes racing for the last of a budget charge
once (seconds each). Plans refused for their bounds or an unlisted model path are in
``tests/unit/test_node_admission.py``.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from node_harness import node_file, signed_record, train_round
from residency.client import admission
from residency.client.admission import Spend
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.client.node_config import load_node_settings
from residency.common.config.job import Job, load_job
from residency.common.config.round_plan import RoundPlan, round_config
from residency.common.errors import ConfigError, DataError, Refused
from toy_federation import write_toy_job


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return load_job(write_toy_job(tmp_path / "job", countries=("DE",), examples=40, rounds=1))


def _race(settings_file: Path, plan: RoundPlan, run: str, meet: Any, out: Any) -> None:
    """One node process trying to charge ``run``'s round, meeting the other inside the check."""
    settings_ = load_node_settings(settings_file)
    store = BudgetStore(settings_.state / STORE_FILE)
    try:
        account = f"{int(run):064x}"  # two launches of the job: two job accounts
        admitted = admission.admit(settings_, plan, store, job_account=account)

        def draft(spend: Spend) -> None:
            del spend
            # If both could be inside the check at once, they would meet here and both pass.
            with contextlib.suppress(threading.BrokenBarrierError):
                meet.wait(timeout=5)

        admission.charge(
            settings_, plan, admitted, store, run=run, job_account=account, draft=draft
        )
        out.put((run, "charged"))
    except Refused as exc:
        out.put((run, str(exc)))


@pytest.mark.node
def test_two_rounds_racing_for_the_last_of_a_budget_charge_once(job: Job, tmp_path: Path) -> None:
    settings_file = node_file(tmp_path, job.privacy.target_epsilon)  # room for one job
    config = round_config(job, base_fingerprint="0" * 64)
    plan = RoundPlan.from_record({**config, "server-round": 1})
    forks = multiprocessing.get_context("fork")
    meet, out = forks.Barrier(2), forks.Queue()
    racers = [
        forks.Process(target=_race, args=(settings_file, plan, run, meet, out))
        for run in ("1", "2")
    ]
    for racer in racers:
        racer.start()
    results = dict(out.get(timeout=120) for _ in racers)
    for racer in racers:
        racer.join(timeout=60)
    assert sorted(result == "charged" for result in results.values()) == [False, True]
    refusal = next(result for result in results.values() if result != "charged")
    assert "dataset budget" in refusal
    assert len(BudgetStore(tmp_path / "state" / STORE_FILE).charges()) == 1


FLOATS = st.one_of(
    st.sampled_from([math.inf, -math.inf, math.nan, 0.0, -1.0, 1e-12, 1e12]),
    st.floats(min_value=1e-6, max_value=1e3, allow_nan=False),
)
PLANS = st.fixed_dictionaries(
    {},
    optional={
        "max-grad-norm": FLOATS,
        "target-epsilon": st.one_of(FLOATS, st.floats(min_value=0.5, max_value=50)),
        "delta": st.one_of(FLOATS, st.sampled_from([1e-9, 1e-5, 1e-4, 0.03, 0.5])),
        "learning-rate": FLOATS,
        "batch-size": st.sampled_from([-1, 0, 1, 8, 40, 10_000]),
        "local-epochs": st.sampled_from([0, 1, 2]),
        "rounds": st.sampled_from([0, 1, 3]),
        "accountant": st.sampled_from(["prv", "rdp", "gdp"]),
        "update": st.sampled_from(["lora", "head", "full", "prompt"]),
        "transfer-dtype": st.sampled_from(["float32", "float16", "int8"]),
        "countries": st.sampled_from([["DE"], ["FR"], []]),
        "refine": st.sampled_from([True, False, 1, "yes"]),
    },
)


@pytest.mark.node
@example(overrides={"target-epsilon": 1e-12})  # Opacus finds no noise: a refusal
@example(overrides={"update": "head"})  # arrays for another update: a fault, never a charge
@example(overrides={"max-grad-norm": math.inf})
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same plans on every run, so CI is repeatable
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(overrides=PLANS)
def test_a_round_is_refused_uncharged_or_trained_with_a_valid_record(
    job: Job, overrides: dict[str, Any]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_toy_job(root / "job", countries=("DE",), examples=40, rounds=1)
        settings_file = node_file(root, 100.0)
        store = BudgetStore(root / "state" / STORE_FILE)
        try:
            reply = train_round(job, settings_file, run_id=1, server_round=1, overrides=overrides)
        except (Refused, ConfigError, DataError):  # a refusal, or a fault of the node's own
            assert store.charges() == []
            return
        record = signed_record(reply)  # parses, canonical, signature verifies
        [charge] = store.charges()
        assert record.charge == charge.id
        assert charge.trained_at is not None
