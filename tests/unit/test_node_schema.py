"""The data's schema is the operator's: a job's view of the data is never a membership oracle.

A job names columns and labels. When the node read its file with them, one record with a label
outside the job's set (or a blank text) made the node fault before any charge, while the same
job on the data without that record trained: "does any record have a value outside S in column
C?" was a free, repeatable question. Now the node reads with the schema in ``node.toml``, skips
unusable records in every round, and compares a job with the declared schema only. The
reproduced oracle, through whole rounds, is in ``tests/node/test_node_schema_rounds.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node_harness import node_file, train_round
from residency.cli.common import EXIT_INPUT
from residency.cli.main import app as cli
from residency.cli.simulation import write_node_settings
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.client.client_app import train
from residency.client.node_config import load_node_settings
from residency.common.config.job import load_job
from residency.common.errors import ConfigError, PolicyViolation
from residency.common.refusal import RefusalCode, decode
from schema_node import charges_of, node_with_rows
from toy_federation import LABELS, separable_rows, write_toy_job


@pytest.mark.unit
@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"labels": ["obj", "neg", "pos"]}, id="labels-permuted"),
        pytest.param({"labels": ["pos", "neg"]}, id="labels-fewer"),
        pytest.param({"labels": ["pos", "neg", "obj", "zzz"]}, id="labels-more"),
        pytest.param({"text-column": "note"}, id="other-text-column"),
        pytest.param({"label-column": "note"}, id="other-label-column"),
    ],
)
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param((), id="clean-data"),
        pytest.param((("good fine", "zzz"),), id="data-with-an-unknown-label"),
        pytest.param((("", "pos"),), id="data-with-a-blank-text"),
    ],
)
def test_a_job_with_another_schema_is_refused_uncharged_whatever_the_data(
    tmp_path: Path, overrides: dict[str, object], extra: tuple[tuple[str, str], ...]
) -> None:
    job, settings = node_with_rows(tmp_path, *extra)
    with pytest.raises(PolicyViolation) as refused:
        train_round(job, settings, run_id=1, server_round=1, overrides=overrides)
    assert refused.value.refusal.code is RefusalCode.SCHEMA_MISMATCH
    differs = {"labels": "labels", "text-column": "text_column", "label-column": "label_column"}
    named = {differs[key] for key in overrides}  # the launcher is told which field, no more
    assert {k for k, v in refused.value.refusal.values.items() if v} == named
    assert charges_of(tmp_path) == []


@pytest.mark.unit
@pytest.mark.parametrize(
    "content",
    [
        pytest.param("text,label\ngood,zzz\n,pos\n", id="no-usable-record"),
        pytest.param("body,label\ngood,pos\n", id="no-text-column"),
        pytest.param(None, id="no-file"),
    ],
)
def test_data_no_round_can_use_is_one_fixed_refusal_before_any_charge(
    tmp_path: Path, content: str | None
) -> None:
    job, settings = node_with_rows(tmp_path)
    data = tmp_path / "job" / "de.csv"
    if content is None:
        data.unlink()
    else:
        data.write_text(content, encoding="utf-8")
    reply = train_round(job, settings, run_id=1, server_round=1, handler=train)
    assert reply.has_error()
    assert decode(reply.error.reason).code is RefusalCode.NO_USABLE_DATA
    assert charges_of(tmp_path) == []
    # The refusal the node keeps (store, ledger) quotes no record; the details are in its log.
    [refusal] = BudgetStore(tmp_path / "state" / STORE_FILE).refusals()
    assert "no usable record" in refusal[4]
    assert "zzz" not in str(refusal)
    assert "zzz" not in (tmp_path / "state" / "ledger.jsonl").read_text(encoding="utf-8")


@pytest.mark.unit
def test_a_node_toml_without_a_schema_names_the_file_the_key_and_the_fix(tmp_path: Path) -> None:
    settings = node_file(tmp_path, 8.0, extra='labels = ["pos", "neg"]\n', public_records=40)
    old = "\n".join(
        line for line in settings.read_text(encoding="utf-8").splitlines() if "labels" not in line
    )
    settings.write_text(old + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_node_settings(settings)
    message = str(caught.value)
    assert message.startswith(f"{settings}: labels: required key is missing")
    assert "fix: add labels = " in message
    assert "\n" not in message


@pytest.mark.unit
@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        pytest.param('["pos"]', "labels: List should have at least 2 items", id="one-label"),
        pytest.param('["pos", "pos"]', "labels: labels repeat pos", id="repeated"),
        pytest.param('["pos", " neg"]', "has outer spaces", id="padded"),
    ],
)
def test_a_bad_declared_label_set_is_one_line_naming_file_and_field(
    tmp_path: Path, labels: str, problem: str
) -> None:
    settings = node_file(tmp_path, 8.0, extra=f"labels = {labels}\n", public_records=40)
    with pytest.raises(ConfigError) as caught:
        load_node_settings(settings)
    message = str(caught.value)
    assert message.startswith(f"{settings}: labels: ")
    assert problem in message
    assert "; fix: " in message
    assert "\n" not in message


def _data(tmp_path: Path, rows: list[tuple[str, str]], header: str = "text,label") -> Path:
    path = tmp_path / "de.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header.split(","))
        writer.writerows(rows)
    return path


def _init(folder: Path, data: Path, *flags: str) -> tuple[int, str]:
    done = CliRunner().invoke(
        cli,
        [
            "node",
            "init",
            str(folder),
            "--country",
            "DE",
            "--data",
            str(data),
            "--budget-epsilon",
            "8",
            "--delta",
            "1e-5",
            *flags,
        ],
    )
    return done.exit_code, done.output


@pytest.mark.unit
@pytest.mark.parametrize(
    ("flags", "header", "field"),
    [
        pytest.param(("--labels", "pos"), "text,label", "--labels", id="one-label"),
        pytest.param(("--labels", "pos,,neg"), "text,label", "--labels", id="blank-label"),
        pytest.param(("--labels", "pos,neg,pos"), "text,label", "--labels", id="repeated"),
        pytest.param(
            ("--labels", "pos,neg,obj", "--text-column", "note"),
            "text,label",
            "text_column 'note'",
            id="missing-text-column",
        ),
        pytest.param(
            ("--labels", "pos,neg,obj", "--label-column", "class"),
            "text,label",
            "label_column 'class'",
            id="missing-label-column",
        ),
        pytest.param(
            ("--labels", "Pos,Neg,Obj"), "text,label", "no usable record", id="no-usable-record"
        ),
    ],
)
def test_node_init_with_a_bad_schema_is_one_line_and_leaves_nothing(
    tmp_path: Path, flags: tuple[str, ...], header: str, field: str
) -> None:
    data = _data(tmp_path, separable_rows(12, 0), header)
    folder = tmp_path / "node"
    code, output = _init(folder, data, *flags)
    assert code == EXIT_INPUT, output
    assert field in output
    assert "fix: " in output
    assert len(output.strip().splitlines()) == 1, output
    assert not folder.exists()


@pytest.mark.unit
def test_node_init_declares_the_schema_and_warns_of_skipped_records(tmp_path: Path) -> None:
    rows = separable_rows(12, 0)
    data = _data(tmp_path, [*rows[:3], ("good", "zzz"), ("", "pos"), *rows[3:], ("x", "zzz")])
    folder = tmp_path / "node"
    code, output = _init(folder, data, "--labels", ",".join(LABELS), "--label-column", "label")
    assert code == 0, output
    assert "3 skipped" in output
    assert "2 with a label outside the label set (line 5, line 16)" in output
    assert "1 with an empty or blank text (line 6)" in output
    settings = load_node_settings(folder / "node.toml")
    assert (settings.text_column, settings.label_column) == ("text", "label")
    assert settings.labels == list(LABELS)


@pytest.mark.unit
def test_node_start_refuses_data_no_round_could_use(tmp_path: Path) -> None:
    data = _data(tmp_path, separable_rows(12, 0))
    folder = tmp_path / "node"
    assert _init(folder, data, "--labels", ",".join(LABELS))[0] == 0
    data.write_text("text,label\ngood,zzz\n", encoding="utf-8")
    done = CliRunner().invoke(
        cli, ["node", "start", str(folder), "--coordinator", "127.0.0.1:1", "--insecure"]
    )
    assert done.exit_code == EXIT_INPUT, done.output
    assert f"{data}: no usable record" in done.output
    assert "1 with a label outside the label set (line 2)" in done.output


@pytest.mark.unit
def test_a_simulated_node_declares_the_jobs_schema_as_its_own(tmp_path: Path) -> None:
    job = load_job(write_toy_job(tmp_path / "job", countries=("DE", "FR"), examples=12))
    job = job.model_copy(
        update={"data": job.data.model_copy(update={"text_column": "note", "label_column": "y"})}
    )
    folder = write_node_settings(job, tmp_path / "out", launcher="ab" * 32)
    for index in range(2):
        settings = load_node_settings(folder / f"{index}.toml")
        assert (settings.text_column, settings.label_column) == ("note", "y")
        assert settings.labels == list(LABELS)
