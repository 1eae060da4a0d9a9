"""Add/remove adjacency: no exact record count leaves a node, only the declared public size.

The differential test of ``docs/privacy.md``: a dataset D and D plus one record, under the same
``public_records``, must give the same observable outcome (every non-noised figure, the same
refusal codes and values, the same step size), and the trainer must sample and scale by the
public size, whatever the data file holds. The whole round over D and D plus one is in
``tests/node/test_public_size_round.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from node_harness import node_file, train_round
from public_size_pair import EXAMPLES, d_and_d_plus_one, node_pair
from residency.cli.simulation import write_node_settings
from residency.client import trainer
from residency.client.daemon import init_node
from residency.client.node_config import load_node_settings
from residency.client.randomness import RoundRandomness
from residency.common.config.job import load_job
from residency.common.config.kinds import AccountantKind, GradSampleMode, UpdateKind
from residency.common.config.signed_job import job_body
from residency.common.data.encoding import encode
from residency.common.data.readers import count_records, read_labeled_texts
from residency.common.device import pick_compute
from residency.common.errors import BudgetExceeded, ConfigError, PolicyViolation
from residency.common.model import ModelSpec, build_classifier, load_tokenizer
from residency.common.privacy import dp_sgd
from residency.common.privacy.public_size import far_from, rounded_size
from residency.common.privacy.sampling import poisson_schedule
from residency.common.refusal import RefusalCode
from toy_federation import LABELS, write_toy_job


@pytest.mark.unit
def test_a_delta_too_large_for_the_public_size_is_refused_alike_for_d_and_d_plus_one(
    tmp_path: Path,
) -> None:
    """``delta >= 1/P`` is judged on the public size; the refusal carries P, never the count."""
    job = load_job(d_and_d_plus_one(tmp_path))
    refusals = []
    for settings in node_pair(tmp_path, 20_000):  # job delta 1e-4 = 2/P
        with pytest.raises(BudgetExceeded) as refused:
            train_round(job, settings, run_id=1, server_round=1)
        refusals.append(refused.value.refusal)
    assert refusals[0].code is RefusalCode.DELTA_TOO_LARGE_FOR_DATA
    assert refusals[0].encode() == refusals[1].encode()
    assert refusals[0].values == {"delta": 1e-4, "examples": 20_000}


@pytest.mark.unit
def test_a_policy_minimum_is_judged_on_the_public_size_alike_for_d_and_d_plus_one(
    tmp_path: Path,
) -> None:
    job = load_job(d_and_d_plus_one(tmp_path))
    (tmp_path / "policy.toml").write_text(
        'name = "strict"\nmin_examples_per_round = 100\n', encoding="utf-8"
    )
    refusals = []
    for settings in node_pair(tmp_path, 50, extra='policy = "policy.toml"\n'):
        with pytest.raises(PolicyViolation) as refused:
            train_round(job, settings, run_id=1, server_round=1)
        refusals.append(refused.value.refusal)
    assert refusals[0].code is RefusalCode.TOO_FEW_EXAMPLES
    assert refusals[0].encode() == refusals[1].encode()
    assert refusals[0].values == {"examples": 50, "minimum": 100}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("update", "mode"),
    [
        (UpdateKind.LORA, GradSampleMode.HOOKS),
        (UpdateKind.FULL, GradSampleMode.GHOST),
        (UpdateKind.HEAD, GradSampleMode.HOOKS),  # the head-only path (client/linear_probe.py)
    ],
)
def test_the_trainer_samples_and_scales_by_the_public_size_not_the_data(
    monkeypatch: pytest.MonkeyPatch, update: UpdateKind, mode: GradSampleMode
) -> None:
    """P ten times the rows: each row is drawn at 1/ceil(P/B), the noisy sum divided by P*q."""
    made: list[dp_sgd.PrivateTraining] = []
    real = trainer.make_private

    def spy(*args: Any, **kwargs: Any) -> dp_sgd.PrivateTraining:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(trainer, "make_private", spy)
    rows, public, batch = 12, 120, 10
    data = encode(
        ["good fine", "bad awful"] * (rows // 2),
        [0, 1] * (rows // 2),
        load_tokenizer("tiny"),
        max_length=8,
    )
    outcome = trainer.train_dp_round(
        build_classifier(ModelSpec(source="tiny", labels=("pos", "neg"), update=update)),
        data,
        schedule=trainer.LocalSchedule(epochs=1, batch_size=batch, learning_rate=1e-3),
        dp=dp_sgd.DpSgdSettings(
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            accountant=AccountantKind.RDP,
            grad_sample_mode=mode,
        ),
        history=(),
        compute=pick_compute(),
        randomness=RoundRandomness.reproducible(3, server_round=1),
        public_records=public,
    )
    sample_rate, steps = poisson_schedule(examples=public, batch_size=batch)
    assert sample_rate == pytest.approx(1 / 12)
    [private] = made
    sampler = private.loader.batch_sampler
    assert (sampler.num_samples, sampler.sample_rate, len(sampler)) == (rows, sample_rate, steps)
    assert private.optimizer.expected_batch_size == pytest.approx(public * sample_rate)
    assert (outcome.sample_rate, outcome.steps) == (sample_rate, steps)
    assert outcome.history == ((1.0, sample_rate, steps),)


@pytest.mark.unit
def test_a_node_file_without_a_public_size_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'country = "DE"\ndata = "de.csv"\nstate = "s"\nbudget_epsilon = 8.0\ndelta = 1e-5\n'
        'labels = ["pos", "neg", "obj"]\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as error:
        load_node_settings(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: public_records: required key is missing; fix: add ")


@pytest.mark.unit
def test_the_proposed_public_size_is_the_count_to_two_significant_figures() -> None:
    sizes = (1, 9, 10, 99, 123, 125, 456, 999, 1234, 98_765)
    assert [rounded_size(n) for n in sizes] == [1, 9, 10, 99, 120, 130, 460, 1000, 1200, 99_000]
    assert [far_from(n, 100) for n in (49, 50, 200, 201)] == [True, False, False, True]


@pytest.mark.unit
def test_records_are_counted_as_the_reader_reads_them(tmp_path: Path) -> None:
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('text,label\n"a, b",pos\n\nc,neg\n"multi\nline",pos\n', encoding="utf-8")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": "pos"}\n\n{"text": "b", "label": "neg"}\n', "utf-8")
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c", "d"], "label": ["pos"] * 4}), parquet)
    for path, expected in ((csv_file, 3), (jsonl, 2), (parquet, 4)):
        read = read_labeled_texts(
            path, text_column="text", label_column="label", labels=["pos", "neg"]
        )
        assert count_records(path) == len(read.texts) == expected


@pytest.mark.unit
def test_node_init_and_simulation_declare_the_rounded_count(tmp_path: Path) -> None:
    job = load_job(write_toy_job(tmp_path / "job", countries=("DE", "FR"), examples=456))
    made = init_node(
        tmp_path / "n",
        country="DE",
        data=tmp_path / "job" / "de.csv",
        budget_epsilon=8,
        delta=1e-5,
        labels=list(LABELS),
    )
    assert made.load().public_records == 460
    chosen = init_node(
        tmp_path / "m",
        country="DE",
        data=tmp_path / "job" / "de.csv",
        budget_epsilon=8,
        delta=1e-5,
        public_records=500,
        labels=list(LABELS),
    )
    assert chosen.load().public_records == 500

    job = job.model_copy(
        update={"nodes": [job.nodes[0], job.nodes[1].model_copy(update={"public_records": 700})]}
    )
    folder = write_node_settings(job, tmp_path / "out", launcher="ab" * 32)
    assert load_node_settings(folder / "0.toml").public_records == 460
    assert load_node_settings(folder / "1.toml").public_records == 700
    assert '"public_records":null' in job_body(job)  # a simulation's setting, never signed


@pytest.mark.unit
def test_node_start_warns_its_operator_when_the_data_is_far_from_the_public_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from residency.cli import node as node_cli

    write_toy_job(tmp_path / "job", countries=("DE",), examples=EXAMPLES)
    for public, warned in ((EXAMPLES, False), (4 * EXAMPLES, True)):
        settings = load_node_settings(node_file(tmp_path, 8.0, public_records=public))
        node_cli._warn_if_far_from_public_size(settings)
        said = " ".join(capsys.readouterr().out.split())
        assert (f"has {EXAMPLES} records, far from public_records = {public}" in said) is warned
