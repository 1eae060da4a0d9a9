"""Cheaper updates: LoRA-FA (A frozen) and float16 on the wire, in a real simulated federation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from residency.auditor.verify import load_keys, verify_ledger
from residency.cli.simulation import simulate
from residency.common.config.job import load_job
from residency.common.config.kinds import UpdateKind
from residency.common.model import (
    ModelSpec,
    Pooling,
    build_classifier,
    export_hf,
    load_tokenizer,
)
from toy_federation import LABELS, LEARNABLE, write_toy_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _learned_and_kept(job_path: Path, out: Path) -> list[dict[str, np.ndarray]]:
    """Simulate a 2-country, 3-round toy job; check it learned and its ledger verifies.

    Returns the arrays of every update the coordinator kept, for the caller's checks.
    """
    results = simulate(load_job(job_path), job_path, out_dir=out)

    assert results.status == "completed"
    assert results.final is not None
    assert results.final.accuracy is not None
    assert results.baseline is not None
    assert results.baseline.accuracy is not None
    # Learns well above chance (0.33); how much accuracy the variants cost is bench/ work.
    assert results.final.accuracy > max(0.45, results.baseline.accuracy + 0.1)
    verified = verify_ledger(out / "ledger" / "ledger.jsonl", load_keys(out / "keys"))
    assert verified.ok, [str(p) for p in verified.problems]
    updates = sorted((out / "ledger" / "updates").glob("*.safetensors"))
    assert len(updates) == 6  # 2 countries x 3 rounds, each kept by its hash
    return [load_file(str(path)) for path in updates]


def test_lora_fa_in_float16_learns_and_sends_only_b_and_head_at_half_precision(
    tmp_path: Path,
) -> None:
    job_path = write_toy_job(
        tmp_path / "job",
        countries=("DE", "FR"),
        rounds=3,
        examples=LEARNABLE,
        train='update = "lora-fa"\ntransfer_dtype = "float16"',
    )
    for arrays in _learned_and_kept(job_path, tmp_path / "out"):
        assert {a.dtype for a in arrays.values()} == {np.dtype(np.float16)}
        assert not any(".lora_A." in name for name in arrays)
        assert any(".lora_B." in name for name in arrays)
        assert any("classifier" in name for name in arrays)


def test_head_only_learns_and_sends_only_the_classifier(tmp_path: Path) -> None:
    # A linear probe needs features that tell texts apart: the tiny BERT's [CLS] pooler, random
    # and squashed by tanh, gives nearly one vector for every text; its token mean does not.
    untrained = build_classifier(
        ModelSpec(source="tiny", labels=LABELS, update=UpdateKind.FULL, pooling=Pooling.MEAN)
    )
    base = export_hf(untrained, load_tokenizer("tiny"), LABELS, tmp_path / "mean-tiny")
    job_path = write_toy_job(
        tmp_path / "job",
        countries=("DE", "FR"),
        rounds=3,
        examples=LEARNABLE,
        train='update = "head"',
        model=str(base),
    )
    for arrays in _learned_and_kept(job_path, tmp_path / "out"):
        assert set(arrays) == {"classifier.weight", "classifier.bias"}
