"""The coordinator's Prometheus metrics, from the same files the dashboard reads.

Runs are separate ServerApp processes that end, so nothing long-lived counts their events;
the figures are read from each run's ``results.json`` and SuperLink's node table at scrape
time, like the page. Every series is labelled by run (and country where it is one country's),
so an operator's alert can name the run and the country.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from residency.server.dashboard.state import DashboardState, RunView
from residency.server.results import RunStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _FromState(Collector):
    def __init__(self, state: DashboardState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        """Every run's and node's figures as the dashboard's state has them."""
        runs = self.state.runs
        status = GaugeMetricFamily(
            "residency_run_status",
            "1 for the run's current status",
            labels=["run", "job", "status"],
        )
        planned = GaugeMetricFamily(
            "residency_run_rounds_planned", "Rounds the run's job asks for", labels=["run"]
        )
        rounds = CounterMetricFamily(
            "residency_run_rounds", "Rounds the run has completed", labels=["run"]
        )
        seconds = CounterMetricFamily(
            "residency_run_round_seconds", "Wall time of the run's completed rounds", labels=["run"]
        )
        last = GaugeMetricFamily(
            "residency_run_last_round_seconds", "Wall time of the latest round", labels=["run"]
        )
        accuracy = GaugeMetricFamily(
            "residency_run_accuracy", "The global model's accuracy, latest round", labels=["run"]
        )
        traffic = CounterMetricFamily(
            "residency_run_bytes",
            "Bytes of model updates sent, by direction",
            labels=["run", "direction"],
        )
        dropped = CounterMetricFamily(
            "residency_run_dropped_nodes", "Countries missing from a round, summed", labels=["run"]
        )
        for run in runs:
            status.add_metric([run.id, run.job, run.status.value], 1)
            planned.add_metric([run.id], run.rounds_planned)
            rounds.add_metric([run.id], len(run.rounds))
            seconds.add_metric([run.id], sum(r.seconds for r in run.rounds))
            if run.rounds:
                last.add_metric([run.id], run.rounds[-1].seconds)
                if run.rounds[-1].accuracy is not None:
                    accuracy.add_metric([run.id], run.rounds[-1].accuracy)
            traffic.add_metric([run.id, "up"], sum(r.bytes_up for r in run.rounds))
            traffic.add_metric([run.id, "down"], sum(r.bytes_down for r in run.rounds))
            dropped.add_metric([run.id], sum(len(r.dropped) for r in run.rounds))
        yield from (status, planned, rounds, seconds, last, accuracy, traffic, dropped)
        yield from _countries(runs)
        running = GaugeMetricFamily("residency_runs_running", "Runs running now")
        running.add_metric([], sum(run.status is RunStatus.RUNNING for run in runs))
        yield running
        queued = GaugeMetricFamily(
            "residency_runs_queued", "Accepted runs waiting for a slot (max_concurrent_runs)"
        )
        queued.add_metric([], sum(run.status is RunStatus.QUEUED for run in runs))
        yield queued
        online = GaugeMetricFamily(
            "residency_node_online", "1 while the country's node is connected", labels=["country"]
        )
        for node in self.state.nodes:
            if node.online is not None:
                online.add_metric([node.country], int(node.online))
        yield online


def _countries(runs: list[RunView]) -> Iterator[Metric]:
    epsilon = GaugeMetricFamily(
        "residency_country_epsilon",
        "Epsilon the country's data spent in the run (signed)",
        labels=["run", "country"],
    )
    target = GaugeMetricFamily(
        "residency_country_target_epsilon", "The run's target epsilon", labels=["run", "country"]
    )
    outcomes = CounterMetricFamily(
        "residency_country_rounds",
        "The country's rounds in the run, by outcome",
        labels=["run", "country", "outcome"],
    )
    for run in runs:
        for country in run.countries:
            labels = [run.id, country.country]
            if country.epsilon is not None:
                epsilon.add_metric(labels, country.epsilon)
            target.add_metric(labels, country.target_epsilon)
            replied = {r.status for r in country.refusals}
            outcomes.add_metric([*labels, "charged"], country.rounds_charged)
            outcomes.add_metric([*labels, "unconfirmed"], country.rounds_unconfirmed)
            for name in sorted(replied):
                count = sum(r.status == name for r in country.refusals)
                outcomes.add_metric([*labels, name], count)
    yield from (epsilon, target, outcomes)


def coordinator_metrics(state: DashboardState) -> bytes:
    """The Prometheus text exposition of ``state``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FromState(state))
    return generate_latest(registry)
