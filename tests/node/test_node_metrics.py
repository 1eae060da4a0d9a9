"""A node's Prometheus metrics: its budget spent and held, its charges, its refusals by code."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node_harness import confirm_round, node_file, train_round
from residency.client.metrics import metrics_text, serve_metrics
from residency.client.node_config import load_node_settings
from residency.common.config.job import Job, load_job
from residency.common.errors import BudgetExceeded
from toy_federation import write_toy_job

pytestmark = [
    pytest.mark.usefixtures("flower_task"),
    pytest.mark.node,
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return load_job(write_toy_job(tmp_path / "job", countries=("DE",), examples=60, rounds=2))


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_nodes_metrics_follow_its_budget_its_holds_and_its_refusals(
    job: Job, tmp_path: Path
) -> None:
    settings_file = node_file(tmp_path, budget=10.0)
    settings = load_node_settings(settings_file)
    confirm_round(job, settings_file, run_id=1)
    held = _samples(metrics_text(settings).decode())
    dataset = frozenset({("country", "DE"), ("dataset", "de.csv#0")})
    assert held[("residency_node_dataset_epsilon_held", dataset)] == pytest.approx(8.0, abs=0.05)
    assert held[("residency_node_dataset_epsilon_spent", dataset)] == 0.0
    for server_round in (1, 2):
        train_round(job, settings_file, run_id=1, server_round=server_round)
    with pytest.raises(BudgetExceeded):
        confirm_round(job, settings_file, run_id=2)

    got = _samples(metrics_text(settings).decode())
    assert got[("residency_node_dataset_epsilon_spent", dataset)] == pytest.approx(8.0, abs=0.05)
    assert got[("residency_node_dataset_epsilon_held", dataset)] == 0.0  # job 1 ran its plan
    assert got[("residency_node_dataset_budget_epsilon", dataset)] == 10.0
    assert got[("residency_node_charges_total", dataset)] == 2
    assert got[("residency_node_untrained_charges_total", dataset)] == 0
    refused = frozenset({("country", "DE"), ("code", "job-unaffordable")})
    assert got[("residency_node_refusals_total", refused)] == 1


def test_the_metrics_are_served_where_node_toml_says(job: Job, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = load_node_settings(
        node_file(tmp_path, budget=10.0, extra=f'metrics_address = "127.0.0.1:{port}"\n')
    )
    assert settings.metrics_address == f"127.0.0.1:{port}"
    serve_metrics(settings, settings.metrics_address)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    assert "# TYPE residency_node_dataset_epsilon_spent gauge" in text
    assert "\nresidency_node_refusals_total{" not in text  # nothing refused yet
