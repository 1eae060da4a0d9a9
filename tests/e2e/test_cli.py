"""The ``residency`` command as a user runs it: real subprocesses, real Flower simulation."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from e2e_cli import RESIDENCY, error_line, residency
from toy_federation import write_toy_job

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_simulate_writes_results_model_and_log(tmp_path: Path) -> None:
    tracked = '\n[tracking]\nexperiment = "toy-e2e"\n'  # into OUTPUT/mlflow.db by default
    job = write_toy_job(tmp_path / "job", countries=("DE", "FR"), rounds=2, privacy=tracked)
    proc = residency("simulate", str(job), "--output", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "federated rounds" in proc.stdout
    assert "ε DE" in proc.stdout
    assert "final accuracy" in proc.stdout
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed"
    assert len(results["rounds"]) == 2
    assert set(results["privacy"]) == {"DE", "FR"}
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "model" / "tokenizer.json").is_file()
    log = (out / "residency.log").read_text()
    assert "aggregate_train" in log
    assert "round 2" in (out / "nodes" / "DE.log").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("toy-e2e")
    assert experiment is not None
    [tracked_run] = client.search_runs([experiment.experiment_id])
    assert tracked_run.info.status == "FINISHED"
    assert tracked_run.data.metrics["epsilon/DE"] == results["privacy"]["DE"]["epsilon"]

    again = residency("simulate", str(job), "--output", "out", cwd=tmp_path)
    assert again.returncode == 2
    assert "already holds a run" in error_line(again)


def test_missing_job_file_is_one_clear_line(tmp_path: Path) -> None:
    proc = residency("simulate", "nope.toml", cwd=tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "nope.toml" in line
    assert "not found" in line
    assert "fix:" in line


def test_unknown_privacy_key_is_refused(tmp_path: Path) -> None:
    job = write_toy_job(tmp_path / "job")
    text = job.read_text().replace("[privacy]\n", "[privacy]\nnoise = 0.0\n")
    job.write_text(text)
    proc = residency("simulate", str(job), cwd=tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "job.toml" in line
    assert "privacy.noise" in line
    assert "unknown key" in line
    assert not (tmp_path / "runs").exists()


def test_job_without_nodes_names_the_tables_to_add(tmp_path: Path) -> None:
    job = write_toy_job(tmp_path / "job")
    job.write_text(job.read_text().split("[[nodes]]")[0])
    proc = residency("simulate", str(job), cwd=tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "nodes: no [[nodes]] tables" in line
    assert 'country = "DE"' in line


def test_label_outside_the_job_is_refused_before_anything_runs(tmp_path: Path) -> None:
    job = write_toy_job(tmp_path / "job", countries=("DE", "FR"))
    data = job.parent / "fr.csv"
    data.write_text(data.read_text() + "some text,positive\n")
    proc = residency("simulate", str(job), "--output", "out", cwd=tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "node FR" in line
    assert "fr.csv" in line
    assert "'positive'" in line
    assert "fix:" in line
    assert not (tmp_path / "out").exists()


def test_demo_runs_end_to_end_with_the_tiny_model(tmp_path: Path) -> None:
    proc = residency(
        "demo",
        "--model",
        "tiny",
        "--countries",
        "DE,FR,ES",
        "--rounds",
        "1",
        "--examples",
        "60",
        "--output",
        "demo",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "synthetic" in proc.stdout
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(results["privacy"]) == {"DE", "FR", "ES"}
    assert results["final"]["accuracy"] is not None
    assert (tmp_path / "demo" / "data" / "job.toml").is_file()
    # The default pipeline: the release, then the one round asked for.
    assert [r["update"] for r in results["rounds"]] == ["prototypes", "head"]
    assert "a prototypes release, then 1 round of head updates" in proc.stdout


def test_a_demo_pipeline_that_does_not_exist_is_refused_before_any_file(tmp_path: Path) -> None:
    proc = residency("demo", "--model", "tiny", "--update", "lora+head", "-o", "demo", cwd=tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert line.startswith("error: --update 'lora+head'")
    assert "fix:" in line
    assert not (tmp_path / "demo").exists()


def test_a_demo_release_over_several_rounds_is_refused_before_any_file(tmp_path: Path) -> None:
    proc = residency(
        "demo", "--model", "tiny", "--update", "prototypes", "--rounds", "3", "-o", "demo",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    line = error_line(proc)
    assert line.startswith("error: --rounds 3: update prototypes is one release")
    assert "fix:" in line
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_ctrl_c_stops_a_simulation_and_its_results_say_so(tmp_path: Path) -> None:
    """Flower runs the ServerApp in a thread Ctrl-C does not reach; the run still ends."""
    job = write_toy_job(tmp_path / "job", rounds=50)
    results = tmp_path / "out" / "results.json"
    printed = tmp_path / "printed.txt"
    with printed.open("wb") as sink:
        process = subprocess.Popen(
            [RESIDENCY, "simulate", str(job), "-o", "out"],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 300
        while not (results.exists() and json.loads(results.read_text("utf-8"))["rounds"]):
            assert process.poll() is None, "simulate ended before its first round"
            assert time.monotonic() < deadline, "no round completed in 300 s"
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=90)  # the round timeout is an hour: this is the stop
        assert code == 130, printed.read_text("utf-8", errors="replace")[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    final = json.loads(results.read_text("utf-8"))
    assert final["status"] == "stopped"
    assert final["error"] == "stopped by a signal (runs stop, Ctrl-C)"
    assert len(final["rounds"]) < 50


def test_user_text_in_an_error_prints_as_written_not_as_emoji(tmp_path: Path) -> None:
    """Rich would render ``:x:`` in a path as an emoji; the user must see their own path."""
    line = error_line(residency("simulate", "ward:x:notes.toml", cwd=tmp_path))

    assert "ward:x:notes.toml" in line


def test_a_country_code_outside_iso_3166_is_refused(tmp_path: Path) -> None:
    job = write_toy_job(tmp_path / "job", countries=("DE", "XX"))

    line = error_line(residency("simulate", str(job), "-o", "out", cwd=tmp_path))

    assert "nodes.1.country: 'XX' is not an ISO 3166-1 alpha-2 country code; fix:" in line
    assert not (tmp_path / "out").exists()
