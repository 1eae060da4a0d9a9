"""A trained round's signed record names the launcher that signed its job, and the job.

A whole round through the node's ClientApp (seconds); who may sign and what each side refuses
is checked in ``tests/unit/test_signed_jobs.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node_harness import TEST_LAUNCHER, node_file, signed_as, signed_record, train_round
from residency.common.config.job import Job, load_job
from toy_federation import write_toy_job


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return load_job(write_toy_job(tmp_path / "job", countries=("DE",), examples=40, rounds=1))


@pytest.mark.node
def test_the_signed_record_names_the_launcher_and_the_job(job: Job, tmp_path: Path) -> None:
    settings = node_file(tmp_path, 100.0)

    record = signed_record(train_round(job, settings, run_id=1, server_round=1))

    assert record.schema_version >= 3
    assert record.launcher == TEST_LAUNCHER.public_hex
    assert record.job_sha256 == signed_as(job, {}, TEST_LAUNCHER, nonce=f"{1:032x}").sha256
