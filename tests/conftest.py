"""Every test belongs to exactly one tier, so ``-m unit`` and its siblings add up to the suite."""

from __future__ import annotations

import pytest

TIERS = ("unit", "node", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse to run a suite in which a test has no tier, or two."""
    wrong = []
    for item in items:
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        if len(tiers) != 1:
            wrong.append(f"{item.nodeid}: {tiers or 'no tier'}")
    if wrong:
        raise pytest.UsageError(
            f"each test needs exactly one of the markers {', '.join(TIERS)}: " + "; ".join(wrong)
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
