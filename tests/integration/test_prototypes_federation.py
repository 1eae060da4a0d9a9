"""``update = "prototypes"`` in a real simulated federation: one release, a head that predicts."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.numpy import load_file

from residency.auditor.verify import load_keys, verify_ledger
from residency.cli.simulation import simulate
from residency.common.config.job import load_job
from residency.common.updates.prototypes import COUNTS, SENSITIVITY, SUMS
from toy_federation import LEARNABLE, exported_accuracy, write_toy_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_one_release_per_country_gives_a_head_the_exported_model_reproduces(
    tmp_path: Path,
) -> None:
    job_path = write_toy_job(
        tmp_path / "job",
        countries=("DE", "FR"),
        rounds=1,
        examples=LEARNABLE,
        train='update = "prototypes"',
    )
    out = tmp_path / "out"
    results = simulate(load_job(job_path), job_path, out_dir=out)

    assert results.status == "completed"
    assert results.final is not None
    assert results.final.accuracy is not None
    assert results.baseline is not None
    assert results.baseline.accuracy is not None
    assert results.final.accuracy > max(0.8, results.baseline.accuracy + 0.3)
    for country in ("DE", "FR"):
        spent = results.privacy[country]
        assert (spent.sample_rate, spent.steps, spent.rounds_averaged) == (1.0, 1, 1)
        assert spent.epsilon is not None
        assert 7.9 < spent.epsilon <= 8.0

    verified = verify_ledger(out / "ledger" / "ledger.jsonl", load_keys(out / "keys"))
    assert verified.ok, [str(p) for p in verified.problems]
    assert {s.record.max_grad_norm for s in verified.spends} == {SENSITIVITY}
    updates = sorted((out / "ledger" / "updates").glob("*.safetensors"))
    assert len(updates) == 2
    for path in updates:  # only the class statistics crossed, nothing trained or textual
        assert set(load_file(str(path))) == {SUMS, COUNTS}

    accuracy, model = exported_accuracy(out / "model", job_path.parent / "test.csv")
    assert model.config.normalize_features is True
    assert accuracy == pytest.approx(results.final.accuracy, abs=1e-9)
