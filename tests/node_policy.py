"""A node under its operator's policy file: a round the policy forbids is refused uncharged.

The policy rules that refuse a round at once are checked in the unit tier
(``tests/unit/test_node_budget_policy.py``); those that first search the noise or compose the
whole job take seconds, in the node tier (``tests/node/test_node_budget.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node_harness import node_file, train_round
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.common.config.job import Job
from residency.common.errors import BudgetExceeded, PolicyViolation
from residency.common.refusal import describe


def assert_the_policy_refuses_before_any_charge(
    job: Job, tmp_path: Path, rules: str, phrase: str
) -> None:
    """A policy ``strict`` of ``rules`` refuses round 1 of ``job``, saying ``phrase``."""
    policy = tmp_path / "policy.toml"
    policy.write_text(f'name = "strict"\n{rules}\n', encoding="utf-8")
    settings = node_file(tmp_path, budget=100.0)
    settings.write_text(settings.read_text("utf-8") + 'policy = "policy.toml"\n', encoding="utf-8")
    with pytest.raises((BudgetExceeded, PolicyViolation), match="refused") as refused:
        train_round(job, settings, run_id=1, server_round=1)
    assert phrase in str(refused.value)  # the node's own log and store keep the sentence
    wire_reason = refused.value.refusal.encode()  # only the code and numbers leave
    assert describe(wire_reason, country="DE", server_round=1).startswith("DE refused round 1: ")
    store = BudgetStore(tmp_path / "state" / STORE_FILE)
    assert store.charges() == []
    assert [r[4] for r in store.refusals()] == [str(refused.value)]
