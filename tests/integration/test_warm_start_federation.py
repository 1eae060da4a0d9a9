"""A release, then DP-SGD on the head it set, in a real simulated federation."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.numpy import load_file

from residency.auditor.report import render_report
from residency.auditor.report_format import ReportFormat
from residency.auditor.verify import load_keys, verify_ledger
from residency.cli.simulation import simulate
from residency.common.config.job import Job, load_job
from residency.common.updates.prototypes import COUNTS, SENSITIVITY, SUMS
from residency.server.results import Results
from toy_federation import LEARNABLE, exported_accuracy, write_toy_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _simulated(tmp_path: Path, train: str, **options: str) -> tuple[Path, Job, Path, Results]:
    """A two-country warm-started toy job run by ``simulate``: (job file, job, out, results)."""
    job_path = write_toy_job(
        tmp_path / "job",
        countries=("DE", "FR"),
        examples=LEARNABLE,
        schedule=False,
        train=train,
        **options,
    )
    job = load_job(job_path)
    out = tmp_path / "out"
    return job_path, job, out, simulate(job, job_path, out_dir=out)


def test_a_warm_started_head_learns_within_one_target_and_exports_what_was_scored(
    tmp_path: Path,
) -> None:
    job_path, job, out, results = _simulated(
        tmp_path,
        'update = "head"\nwarm_start = "prototypes"',
        data="validation_share = 0",  # every round trains on; the choice is tested below
    )

    assert results.status == "completed"
    assert [r.update for r in results.rounds] == ["prototypes"] + ["head"] * job.train.rounds
    release, *training = results.rounds
    assert {n.steps for n in release.nodes} == {1}
    assert {(n.sample_rate, n.steps) for r in training for n in r.nodes} == {(1.0, 10)}
    assert results.final is not None
    assert results.final.accuracy is not None
    assert results.final.accuracy > 0.8
    assert results.final.round is None  # nothing held out: the last model
    for country in ("DE", "FR"):
        spent = results.privacy[country]
        assert spent.epsilon is not None
        assert 7.9 < spent.epsilon <= 8.0  # release and training share the one target
        assert spent.rounds_averaged == job.train.server_rounds

    verified = verify_ledger(out / "ledger" / "ledger.jsonl", load_keys(out / "keys"))
    assert verified.ok, [str(p) for p in verified.problems]
    assert sorted({s.record.max_grad_norm for s in verified.spends}) == [1.0, SENSITIVITY]
    page = render_report(verified, fmt=ReportFormat.HTML)
    assert "prototypes+head: round 1 the prototypes release, then head training" in page
    sent = [set(load_file(str(p))) for p in (out / "ledger" / "updates").glob("*.safetensors")]
    assert sent.count({SUMS, COUNTS}) == 2
    assert sent.count({"classifier.weight", "classifier.bias"}) == 2 * job.train.rounds

    accuracy, model = exported_accuracy(
        out / "model", job_path.parent / "test.csv", validation_share=0.0
    )
    assert model.config.normalize_features is True
    assert len(model.config.feature_scale) == model.config.hidden_size
    assert accuracy == pytest.approx(results.final.accuracy, abs=1e-9)


def test_training_that_loses_ground_gives_the_budget_left_to_the_release(
    tmp_path: Path,
) -> None:
    """Held-out accuracy falls after the first training round: the release again, then stop.

    A clipping norm of 1000 makes training's noise (z times C) drown its clipped gradients,
    which a natural norm keeps near 1, while the release's sensitivity does not change.
    """
    job_path, _, out, results = _simulated(
        tmp_path,
        'update = "head"\nwarm_start = "prototypes"\nstep_rule = "fixed"\nlearning_rate = 10',
        privacy="max_grad_norm = 1000.0",
    )

    assert results.status == "completed"
    assert [(r.update, r.refine) for r in results.rounds] == [
        ("prototypes", False),
        ("head", False),
        ("prototypes", True),
    ]
    release, trained, refined = results.rounds
    assert release.held_out_accuracy is not None
    assert trained.held_out_accuracy is not None
    assert trained.held_out_accuracy < release.held_out_accuracy
    assert results.final is not None
    assert results.final.round == 3
    assert results.final.accuracy == refined.accuracy
    for country in ("DE", "FR"):
        spent = results.privacy[country]
        assert spent.epsilon is not None
        assert 7.9 < spent.epsilon <= 8.0  # the refine spent what training left
        assert spent.steps == 1 + 10 + 1  # release, one training round, the release again
    assert {n.noise_multiplier for n in refined.nodes} != {
        n.noise_multiplier for n in release.nodes
    }

    verified = verify_ledger(out / "ledger" / "ledger.jsonl", load_keys(out / "keys"))
    assert verified.ok, [str(p) for p in verified.problems]
    assert len(verified.spends) == 6
    sent = [set(load_file(str(p))) for p in (out / "ledger" / "updates").glob("*.safetensors")]
    assert sent.count({SUMS, COUNTS}) == 4

    accuracy, _ = exported_accuracy(out / "model", job_path.parent / "test.csv")
    assert accuracy == pytest.approx(results.final.accuracy, abs=1e-9)


def test_the_kept_model_is_the_best_on_the_held_out_part(tmp_path: Path) -> None:
    """Scores are reported on the rest of the test set; the export is the kept round's model."""
    job_path = write_toy_job(tmp_path / "job", countries=("DE", "FR"), rounds=3)
    job = load_job(job_path)
    out = tmp_path / "out"
    results = simulate(job, job_path, out_dir=out)

    assert results.status == "completed"
    held_out = [r.held_out_accuracy for r in results.rounds]
    assert None not in held_out
    assert results.final is not None
    assert results.final.round is not None
    kept = results.final.round
    assert held_out[kept - 1] == max(held_out)  # type: ignore[type-var]
    assert max(i for i, a in enumerate(held_out) if a == max(held_out)) == kept - 1  # ties: later
    assert results.final.accuracy == results.rounds[kept - 1].accuracy
    accuracy, _ = exported_accuracy(out / "model", job_path.parent / "test.csv")
    assert accuracy == pytest.approx(results.final.accuracy, abs=1e-9)


def test_lora_after_a_release_adapts_the_encoder_within_one_target(tmp_path: Path) -> None:
    """Release, then LoRA on the head it set: the export merges the adapters a user loads."""
    job_path, job, out, results = _simulated(
        tmp_path, 'update = "lora"\nwarm_start = "prototypes"', data="validation_share = 0"
    )

    assert results.status == "completed"
    assert [r.update for r in results.rounds] == ["prototypes"] + ["lora"] * job.train.rounds
    assert results.final is not None
    assert results.final.accuracy is not None
    assert results.final.accuracy > 0.8
    for country in ("DE", "FR"):
        spent = results.privacy[country]
        assert spent.epsilon is not None
        assert 7.9 < spent.epsilon <= 8.0

    verified = verify_ledger(out / "ledger" / "ledger.jsonl", load_keys(out / "keys"))
    assert verified.ok, [str(p) for p in verified.problems]
    sent = [load_file(str(p)) for p in (out / "ledger" / "updates").glob("*.safetensors")]
    assert sum(set(arrays) == {SUMS, COUNTS} for arrays in sent) == 2
    adapters = [a for arrays in sent for n, a in arrays.items() if "lora_B" in n]
    assert adapters
    assert any(abs(a).max() > 0 for a in adapters)  # the encoder learned

    accuracy, model = exported_accuracy(
        out / "model", job_path.parent / "test.csv", validation_share=0.0
    )
    assert model.config.normalize_features is True
    assert len(model.config.feature_scale) == model.config.hidden_size
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged
    assert accuracy == pytest.approx(results.final.accuracy, abs=1e-9)
