"""Build real ledgers for tests: signed records with Opacus' epsilons, as a federation writes.

The coordinator's ledger, its update files and each node's own ledger are written with the
product's own classes and keys, so verification and reports are tested on the same bytes a run
produces, only faster (no training).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from residency.common.clock import now
from residency.common.config.job import AccountantKind
from residency.common.files import write_atomic
from residency.common.privacy.accountant import History, compose, epsilon_spent
from residency.common.privacy.ledger import LEDGER_FILE, EntryKind, Ledger
from residency.common.privacy.record import PrivacyRecord, SignedRecord, sign_record
from residency.common.privacy.signing import Signer, create_signer, public_path
from residency.common.privacy.update_digest import update_sha256
from residency.server.record_check import Received
from residency.server.run_ledger import RunLedger

DELTA = 1e-5
TARGET = 8.0
BUDGET = 12.0


@dataclass
class LedgerFixture:
    """Paths of a written ledger, the auditor's key folder and the nodes' own ledgers."""

    ledger: Path
    keys: Path
    node_ledgers: dict[str, Path] = field(default_factory=dict)
    signers: dict[str, Signer] = field(default_factory=dict)


def _update(country: str, server_round: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(sum(map(ord, country)) * 100 + server_round)
    return {
        "classifier.weight": rng.standard_normal((3, 8)).astype(np.float32),
        "classifier.bias": rng.standard_normal(3).astype(np.float32),
    }


def write_ledger(
    folder: Path,
    *,
    countries: tuple[str, ...] = ("DE", "FR"),
    rounds: int = 3,
    refuse: tuple[str, int] | None = ("FR", 3),
    kind: AccountantKind = AccountantKind.PRV,
    noise: float = 1.1,
    sample_rate: float = 0.05,
    steps: int = 40,
    run: str = "7",
    job: str = "triage",
) -> LedgerFixture:
    """A finished run of ``rounds`` rounds over ``countries``; ``refuse`` skips one round."""
    keys = folder / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    coordinator_key = folder / "private" / "coordinator.key"
    create_signer(coordinator_key, comment="coordinator")
    write_atomic(keys / "coordinator.pub", public_path(coordinator_key).read_bytes())
    ledger_dir = folder / "ledger"
    run_ledger = RunLedger.open(ledger_dir, coordinator_key, run=run, job=job)
    fixture = LedgerFixture(ledger=ledger_dir / LEDGER_FILE, keys=keys)
    run_ledger.ledger.append(
        EntryKind.RUN_STARTED,
        run=run,
        job=job,
        detail={
            "countries": ",".join(countries),
            "rounds": rounds,
            "target_epsilon": TARGET,
            "delta": DELTA,
            "accountant": kind.value,
            "update": "lora",
        },
    )
    node_ledgers: dict[str, Ledger] = {}
    histories: dict[str, History] = {}
    for country in countries:
        private = folder / "private" / f"{country}.key"
        signer = create_signer(private, comment=country)
        write_atomic(keys / f"{country}.pub", public_path(private).read_bytes())
        fixture.signers[country] = signer
        path = folder / "nodes" / country / LEDGER_FILE
        node_ledgers[country] = Ledger(path, signer)
        fixture.node_ledgers[country] = path
        histories[country] = ()
    step = (noise, sample_rate, steps)
    charge = 0
    for server_round in range(1, rounds + 1):
        for country in countries:
            where = {"run": run, "job": job, "country": country, "round": server_round}
            if refuse == (country, server_round):
                reason = f"{country} refused round {server_round}: dataset budget 12.00"
                node_ledgers[country].append(EntryKind.REFUSAL, **where, reason=reason)
                run_ledger.refusal(country, server_round, reason)
                continue
            charge += 1
            dataset = hashlib.sha256(f"{country}-records".encode()).hexdigest()
            node_ledgers[country].append(
                EntryKind.CHARGE,
                **where,
                detail={
                    "charge": charge,
                    "dataset": dataset,
                    "noise_multiplier": noise,
                    "sample_rate": sample_rate,
                    "steps": steps,
                    "delta": DELTA,
                    "accountant": kind.value,
                },
            )
            before = histories[country]
            after = compose(before, step)
            histories[country] = after
            total = epsilon_spent(after, delta=DELTA, kind=kind)
            arrays = _update(country, server_round)
            digest = update_sha256(arrays)
            signer = fixture.signers[country]
            signed = sign_record(
                PrivacyRecord(
                    job=job,
                    run=run,
                    round=server_round,
                    node=100 + len(country),
                    country=country,
                    dataset=dataset,
                    examples=400,
                    noise_multiplier=noise,
                    sample_rate=sample_rate,
                    steps=steps,
                    max_grad_norm=1.0,
                    accountant=kind,
                    delta=DELTA,
                    history=list(after),
                    epsilon_round=total - epsilon_spent(before, delta=DELTA, kind=kind),
                    epsilon=total,
                    target_epsilon=TARGET,
                    epsilon_dataset=total,
                    budget_epsilon=BUDGET,
                    policy="ab" * 32,
                    policy_name="eu-health",
                    version="0.1.0",
                    update_sha256=digest,
                    charge=charge,
                    signed_at=now(),
                    key=signer.public_hex,
                ),
                signer,
            )
            node_ledgers[country].append(
                EntryKind.RECORD, **where, record=signed, received_sha256=digest
            )
            run_ledger.record(
                Received(_opened(signed), signed, digest, arrays), averaged=True, reason=None
            )
    run_ledger.finished("completed", None)
    return fixture


def _opened(signed: SignedRecord) -> PrivacyRecord:
    return PrivacyRecord.model_validate_json(signed.body)
