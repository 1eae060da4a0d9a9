"""A node's Prometheus metrics, read from its durable budget store at each scrape.

What an operator watches for months: how much of each dataset's budget is spent and held,
how many rounds it charged, how many it refused and why (by refusal code). Nothing here is
about the records themselves; like ``node status``, it reads the store, never the data.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.client.node_config import NodeSettings
from residency.common.config.kinds import AccountantKind
from residency.common.privacy.accountant import epsilon_spent


class NodeCollector(Collector):
    """The node's figures, computed from ``state/budget.sqlite`` when Prometheus asks."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        """One sample per dataset account (and per refusal code), as of now."""
        settings = self.settings
        store = BudgetStore(settings.state / STORE_FILE)
        labels = ["country", "dataset"]
        spent = GaugeMetricFamily(
            "residency_node_dataset_epsilon_spent",
            "Epsilon the dataset account has spent over every job (the node's accountant)",
            labels=labels,
        )
        budget = GaugeMetricFamily(
            "residency_node_dataset_budget_epsilon", "The dataset's lifetime budget", labels=labels
        )
        held = GaugeMetricFamily(
            "residency_node_dataset_epsilon_held",
            "Epsilon confirmed jobs still hold on the dataset (their rounds to come)",
            labels=labels,
        )
        charges = CounterMetricFamily(
            "residency_node_charges", "Rounds charged to the dataset", labels=labels
        )
        untrained = CounterMetricFamily(
            "residency_node_untrained_charges",
            "Charged rounds that did not finish training (a fault or a kill after the charge)",
            labels=labels,
        )
        names = {account.id: f"{account.name}#{account.generation}" for account in store.accounts()}
        all_charges = store.charges()
        reservations = store.reservations()
        for dataset in sorted({c.dataset for c in all_charges} | {r.dataset for r in reservations}):
            mine = [c for c in all_charges if c.dataset == dataset]
            key = [settings.country, names.get(dataset, dataset[:12])]
            kind = AccountantKind(mine[-1].accountant) if mine else AccountantKind.PRV
            history = store.history(dataset)
            budget.add_metric(key, settings.budget_epsilon)
            holding = store.held(dataset, job_account="").others  # every job's hold
            now_spent = epsilon_spent(history, delta=settings.delta, kind=kind)
            spent.add_metric(key, now_spent)
            total = epsilon_spent((*history, *holding), delta=settings.delta, kind=kind)
            held.add_metric(key, max(total - now_spent, 0.0))
            charges.add_metric(key, len(mine))
            untrained.add_metric(key, sum(c.trained_at is None for c in mine))
        refusals = CounterMetricFamily(
            "residency_node_refusals",
            "Rounds and jobs the node refused, by code",
            labels=["country", "code"],
        )
        for code, count in store.refusal_codes().items():
            refusals.add_metric([settings.country, code or "unknown"], count)
        yield from (spent, budget, held, charges, untrained, refusals)


def _registry(settings: NodeSettings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(settings))
    return registry


def serve_metrics(settings: NodeSettings, address: str) -> None:
    """Serve ``/metrics`` on ``host:port`` in a daemon thread (``metrics_address``)."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=_registry(settings))


def metrics_text(settings: NodeSettings) -> bytes:
    """The exposition Prometheus would scrape now (what ``serve_metrics`` answers)."""
    return generate_latest(_registry(settings))
