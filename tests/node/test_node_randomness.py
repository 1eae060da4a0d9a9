"""A node's noise and batches are secret to it: nothing in a job or round plan fixes them.

Whole rounds through the ClientApp, seconds each; where a round's randomness comes from is
checked in ``tests/unit/test_round_randomness.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from node_harness import node_file, signed_record, train_round, update_of
from residency.client import randomness, trainer
from residency.common.config.job import Job, load_job
from residency.common.privacy import dp_sgd
from residency.common.privacy.record import NoiseSource
from toy_federation import write_toy_job


def _differ(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return any(not np.array_equal(a[name], b[name]) for name in a)


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return load_job(write_toy_job(tmp_path / "job", countries=("FR", "ES"), examples=40))


@pytest.mark.node
def test_the_same_job_run_twice_sends_different_updates(job: Job, tmp_path: Path) -> None:
    first = node_file(tmp_path, 100.0, country="FR", data="job/fr.csv", state="a", name="a.toml")
    again = node_file(tmp_path, 100.0, country="FR", data="job/fr.csv", state="b", name="b.toml")
    one = train_round(job, first, run_id=1, server_round=1)
    two = train_round(job, again, run_id=1, server_round=1)  # same job, run, round, data
    assert _differ(update_of(one), update_of(two))
    assert signed_record(one).noise_source is NoiseSource.OS_ENTROPY


@pytest.mark.node
def test_two_countries_with_identical_data_draw_different_noise(job: Job, tmp_path: Path) -> None:
    # FR and ES: the same sum of letters (152), which once gave them the same seed.
    fr = node_file(tmp_path, 100.0, country="FR", data="job/fr.csv", state="fr", name="fr.toml")
    es = node_file(tmp_path, 100.0, country="ES", data="job/fr.csv", state="es", name="es.toml")
    assert _differ(
        update_of(train_round(job, fr, run_id=1, server_round=1)),
        update_of(train_round(job, es, run_id=1, server_round=1)),
    )


def _draws(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Record the sampler's and the noise's generator states as each round's DP starts."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = trainer.make_private

    def spy(*args: Any, **kwargs: Any) -> dp_sgd.PrivateTraining:
        loader, noise = args[2], kwargs["noise_generator"]
        seen.append((loader.generator.get_state(), noise.get_state()))
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "make_private", spy)
    return seen


@pytest.mark.node
def test_only_the_nodes_entropy_moves_the_noise_draw(
    job: Job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _draws(monkeypatch)
    entropy = {"byte": 7}
    monkeypatch.setattr(randomness, "os_entropy", lambda size: bytes([entropy["byte"]]) * size)
    settings = node_file(tmp_path, 1000.0, country="FR", data="job/fr.csv")
    other_job = load_job(
        write_toy_job(tmp_path / "other", countries=("FR", "ES"), examples=40, extra="", rounds=3)
    )
    train_round(job, settings, run_id=1, server_round=1)
    # Another job, run, round, seed and learning rate: the same draws.
    train_round(
        other_job,
        settings,
        run_id=9,
        server_round=2,
        overrides={
            "job": "other",
            "seed": 0,
            "learning-rate": 0.5,
        },
    )
    entropy["byte"] = 8  # only the OS entropy changes
    train_round(job, settings, run_id=1, server_round=1)
    (s1, n1), (s2, n2), (s3, n3) = seen
    assert torch.equal(s1, s2)
    assert torch.equal(n1, n2)
    assert not torch.equal(s1, s3)
    assert not torch.equal(n1, n3)


@pytest.mark.node
def test_an_operator_seed_repeats_runs_and_every_record_says_so(job: Job, tmp_path: Path) -> None:
    settings = [
        node_file(
            tmp_path,
            100.0,
            country="FR",
            data="job/fr.csv",
            state=state,
            name=f"{state}.toml",
            extra="noise_seed = 42\n",
        )
        for state in ("a", "b")
    ]
    one, two = (train_round(job, path, run_id=1, server_round=1) for path in settings)
    assert not _differ(update_of(one), update_of(two))
    assert signed_record(one).noise_source is NoiseSource.OPERATOR_SEED
