"""Twenty countries, ten rounds: a federation at scale runs to the end, as a user checks it.

The cheapest schedule that still trains (DP-SGD on the head alone, 30 rows per country, one
full-batch step per round) keeps the run short on a 2-core machine; what grows with the
number of countries is measured by ``bench/scale.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2e_cli import residency
from residency.auditor.verify import load_keys, verify_ledger
from toy_federation import write_toy_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CODES = "AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT"
COUNTRIES = tuple(CODES.split())  # 20 distinct ISO 3166-1 alpha-2 codes
ROUNDS = 10
EXAMPLES = 30
TARGET_EPSILON = 8.0


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("scale")
    job = write_toy_job(
        folder / "job",
        countries=COUNTRIES,
        examples=EXAMPLES,
        train=f'update = "head"\nrounds = {ROUNDS}\nlocal_epochs = 1\nbatch_size = {EXAMPLES}',
        schedule=False,
    )
    out = folder / "out"
    done = residency("simulate", str(job), "--output", str(out), cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_every_round_completes_with_every_country(run: tuple[Path, dict[str, Any]]) -> None:
    _, results = run
    assert results["status"] == "completed"
    assert results["error"] is None
    assert [entry["round"] for entry in results["rounds"]] == list(range(1, ROUNDS + 1))
    for entry in results["rounds"]:
        assert sorted(node["country"] for node in entry["nodes"]) == sorted(COUNTRIES)
        assert all(node["status"] == "ok" for node in entry["nodes"]), entry["nodes"]
        assert all(node["examples"] == EXAMPLES for node in entry["nodes"])
        assert all(node["steps"] >= 1 for node in entry["nodes"])  # each node trained
        assert entry["bytes_up"] == sum(node["bytes_up"] for node in entry["nodes"])
    assert results["final"]["accuracy"] is not None


def test_every_country_stays_within_its_target(run: tuple[Path, dict[str, Any]]) -> None:
    _, results = run
    assert set(results["privacy"]) == set(COUNTRIES)
    for country, spent in results["privacy"].items():
        assert spent["target_epsilon"] == TARGET_EPSILON
        assert 0 < spent["epsilon"] <= TARGET_EPSILON, country
        assert (spent["rounds_averaged"], spent["rounds_charged"]) == (ROUNDS, ROUNDS)
        assert spent["rounds_unconfirmed"] == 0


def test_the_ledger_names_every_country_in_every_round(
    run: tuple[Path, dict[str, Any]],
) -> None:
    out, results = run
    node_ledgers = [out / "nodes" / f"{c}-state" / "ledger.jsonl" for c in COUNTRIES]

    verified = verify_ledger(
        out / "ledger" / "ledger.jsonl", load_keys(out / "keys"), node_ledgers=node_ledgers
    )

    assert verified.ok, [str(p) for p in verified.problems]
    assert sorted((s.country, s.round) for s in verified.spends) == sorted(
        (c, r) for c in COUNTRIES for r in range(1, ROUNDS + 1)
    )
    assert all(s.averaged for s in verified.spends)
    last = {s.country: s.record.epsilon for s in verified.spends if s.round == ROUNDS}
    assert last == {c: results["privacy"][c]["epsilon"] for c in COUNTRIES}
    assert all(s.epsilon_opacus <= TARGET_EPSILON + 1e-9 for s in verified.spends)
