"""Every test belongs to exactly one tier, so ``-m unit`` and its siblings add up to the suite.

A tier is a marker and a folder: a test marked ``node`` lives in ``tests/node/``, so
``pytest tests/unit`` and ``pytest -m unit`` run the same tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "node", "integration", "e2e")
TESTS = Path(__file__).parent

# Checks that tests of two tiers share, moved out of the test modules: pytest still explains
# a failed assert in them value by value.
pytest.register_assert_rewrite(
    "differential_jobs", "honest_ledgers", "node_policy", "public_size_pair"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse to run a suite in which a test has no tier, or two, or sits in another's folder."""
    wrong = []
    for item in items:
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        folder = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
        if len(tiers) != 1:
            wrong.append(f"{item.nodeid}: {tiers or 'no tier'}")
        elif folder != tiers[0]:
            wrong.append(f"{item.nodeid}: {tiers[0]}, outside tests/{tiers[0]}/")
    if wrong:
        raise pytest.UsageError(
            f"each test needs exactly one of the markers {', '.join(TIERS)}, and lives in the "
            "folder of that name under tests/: " + "; ".join(wrong)
        )


@pytest.fixture
def flower_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's task identity as a ClientApp process has it (run 5, node 0, task 1).

    For tests that hand the node's handlers a message in-process.
    """
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 5)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
