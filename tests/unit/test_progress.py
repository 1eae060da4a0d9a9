"""The CLI's live bars say what each round does: a refine is a release, not local epochs."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from residency.cli.progress import RichObserver
from residency.common.config.job import load_job
from residency.common.config.kinds import UpdateKind
from toy_federation import write_toy_job

pytestmark = pytest.mark.unit


def test_the_node_bar_counts_what_the_round_asks_for(tmp_path: Path) -> None:
    job = load_job(
        write_toy_job(
            tmp_path / "job",
            countries=("DE", "FR"),
            schedule=False,
            train='update = "head"\nwarm_start = "prototypes"',
        )
    )
    with RichObserver(job, Console(file=None, record=True, width=100)) as observer:
        seen = []
        for server_round, update in (
            (1, UpdateKind.PROTOTYPES),
            (2, UpdateKind.HEAD),
            (3, UpdateKind.PROTOTYPES),  # the refine: the release again
        ):
            observer.round_started(server_round, 2, update)
            task = observer.progress.tasks[observer.epochs]
            seen.append((task.description, task.total))
    assert seen == [
        ("round 1: releases", 2),
        ("round 2: local epochs", 2 * job.train.local_epochs),
        ("round 3: releases", 2),
    ]


def test_a_waiting_round_is_said_with_who_is_missing_and_for_how_long(tmp_path: Path) -> None:
    job = load_job(write_toy_job(tmp_path / "job", countries=("DE", "FR", "IT")))
    console = Console(file=None, record=True, width=200)
    with RichObserver(job, console) as observer:
        observer.waiting(1, ["FR", "IT"], 30.4, 600.0)
        observer.waiting(1, ["1 node(s) never heard from"], 45.0, 600.0)
    lines = console.export_text().splitlines()
    assert (
        "round 1: waiting for FR, IT to connect (30 s of 600 s; [train] nodes_timeout_s)" in lines
    )
    assert any(line.startswith("round 1: waiting for 1 node(s) never heard from") for line in lines)
