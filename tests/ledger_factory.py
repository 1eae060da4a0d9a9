"""Build real ledgers for tests: signed records with Opacus' epsilons, as a federation writes.

The coordinator's ledger, its update files and each node's own ledger are written with the
product's own classes and keys, so verification and reports are tested on the same bytes a run
produces, only faster (no training).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from residency.common.clock import now
from residency.common.config.kinds import AccountantKind
from residency.common.files import write_atomic
from residency.common.privacy.accountant import History, PrivacyStep, compose, epsilon_spent
from residency.common.privacy.ledger import LEDGER_FILE, EntryKind, Ledger
from residency.common.privacy.record import (
    MechanismChecks,
    NoiseSource,
    PrivacyRecord,
    SignedRecord,
    sign_record,
)
from residency.common.privacy.signing import Signer, create_signer, public_path
from residency.common.privacy.update_digest import update_sha256
from residency.common.refusal import Refusal, RefusalCode, describe
from residency.server.record_check import Received
from residency.server.run_ledger import RunLedger

DELTA = 1e-5
TARGET = 8.0
BUDGET = 12.0
RESET_REASON = "new extract of the ward's notes, approved by the DPO"


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


def account(country: str, generation: int = 1) -> str:
    """A country's dataset account id (a keyed id on a real node; any 64 hex digits here)."""
    suffix = "" if generation == 1 else f"-{generation}"
    return hashlib.sha256(f"{country}-records{suffix}".encode()).hexdigest()


def refusal_reason(country: str, server_round: int) -> str:
    """The sentence a coordinator writes for a dataset-budget refusal."""
    wire_reason = Refusal(
        RefusalCode.DATASET_BUDGET, {"budget": BUDGET, "spent": 11.5, "needed": 1.2}
    ).encode()
    return describe(wire_reason, country=country, server_round=server_round)


def signed_record(
    signer: Signer,
    arrays: Mapping[str, np.ndarray],
    *,
    job: str,
    run: str,
    server_round: int,
    country: str,
    before: History = (),
    step: tuple[float, float, int] = (1.1, 0.05, 40),
    examples: int = 400,
    dataset: str | None = None,
    charge: int = 1,
    kind: AccountantKind = AccountantKind.PRV,
    noise_source: NoiseSource = NoiseSource.OS_ENTROPY,
    target: float = TARGET,
    budget: float = BUDGET,
    epsilon_of: Callable[[History], float] | None = None,
    mechanism: MechanismChecks | Literal["passed"] | None = "passed",
    schema: Literal[4, 5] = 5,
    job_sha256: str | None = None,
) -> SignedRecord:
    """A node's signed record of one round whose run history was ``before`` plus ``step``.

    ``epsilon_of``: how the node computes the epsilons it signs from a history (Opacus' by
    default, as the node does; a cheating node's own way otherwise). ``mechanism``: the
    node's signed checks that DP ran; ``"passed"`` is every check passed. ``schema`` 4 states
    the dataset's lifetime epsilon in the record (a fresh dataset's: the run's own); 5 leaves
    it to the node's charge entries.
    """

    def spent(history: History) -> float:
        if epsilon_of is None:
            return epsilon_spent(history, delta=DELTA, kind=kind)
        return epsilon_of(history) if history else 0.0

    after = compose(before, step)
    total = spent(after)
    noise, sample_rate, steps = step
    return sign_record(
        PrivacyRecord(
            job=job,
            run=run,
            round=server_round,
            node=100 + len(country),
            country=country,
            dataset=dataset or account(country),
            examples=examples,
            noise_multiplier=noise,
            sample_rate=sample_rate,
            steps=steps,
            max_grad_norm=1.0,
            noise_source=noise_source,
            accountant=kind,
            delta=DELTA,
            history=list(after),
            epsilon_round=total - spent(before),
            epsilon=total,
            target_epsilon=target,
            schema_version=schema,
            epsilon_dataset=total if schema < 5 else None,
            budget_epsilon=budget,
            policy="ab" * 32,
            policy_name="eu-health",
            version="0.1.0",
            update_sha256=update_sha256(arrays),
            charge=charge,
            signed_at=now(),
            key=signer.public_hex,
            job_sha256=job_sha256,
            mechanism=MechanismChecks(
                steps=steps, batches=steps, clipped_batches=steps, noise_std=noise * 1.0
            )
            if mechanism == "passed"
            else mechanism,
        ),
        signer,
    )


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
    examples: int = 400,
    noise_source: NoiseSource = NoiseSource.OS_ENTROPY,
    repeat_update: bool = False,
    reset: str | None = None,
    schedule: Sequence[PrivacyStep] | None = None,
    target: float = TARGET,
    epsilon_of: Callable[[History], float] | None = None,
    mechanism: MechanismChecks | Literal["passed"] | None = "passed",
    schema: Literal[4, 5] = 5,
) -> LedgerFixture:
    """A finished run of ``rounds`` rounds over ``countries``; ``refuse`` skips one round.

    ``schedule``: each round's mechanism, in order (a warm start's release, then training),
    instead of ``rounds`` rounds of (``noise``, ``sample_rate``, ``steps``). ``target``: the
    job's epsilon (the dataset budget is 1.5 times it). ``epsilon_of``: see
    :func:`signed_record`. ``mechanism``: every record's signed checks that DP ran
    (``"passed"``: all passed). ``schema``: the records' (4: each states its dataset's lifetime
    epsilon and the node-wide charge id; 5: neither, the node's charge entries hold them).

    ``repeat_update``: each country sends bit-identical arrays every round. ``reset``: that
    country's operator opened a new account for its dataset before the run, so its node ledger
    starts with a budget-reset entry and its records name the new account.
    """
    steps_by_round = list(schedule or [(noise, sample_rate, steps)] * rounds)
    rounds = len(steps_by_round)
    budget = BUDGET if target == TARGET else 1.5 * target
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
            "target_epsilon": target,
            "delta": DELTA,
            "accountant": kind.value,
            "update": "lora",
        },
    )
    node_ledgers: dict[str, Ledger] = {}
    histories: dict[str, History] = {}
    datasets: dict[str, str] = {}
    for country in countries:
        private = folder / "private" / f"{country}.key"
        signer = create_signer(private, comment=country)
        write_atomic(keys / f"{country}.pub", public_path(private).read_bytes())
        fixture.signers[country] = signer
        path = folder / "nodes" / country / LEDGER_FILE
        node_ledgers[country] = Ledger(path, signer)
        fixture.node_ledgers[country] = path
        histories[country] = ()
        datasets[country] = account(country)
        if country == reset:
            datasets[country] = account(country, 2)
            node_ledgers[country].append(
                EntryKind.BUDGET_RESET,
                country=country,
                reason=RESET_REASON,
                detail={
                    "dataset": f"{country.lower()}-notes",
                    "old_account": account(country),
                    "new_account": datasets[country],
                },
            )
    charge = 0
    job_charges: dict[str, int] = {}
    job_sha256 = hashlib.sha256(f"{job}-{run}".encode()).hexdigest()
    for server_round, step in enumerate(steps_by_round, start=1):
        for country in countries:
            where = {"run": run, "job": job, "country": country, "round": server_round}
            if refuse == (country, server_round):
                reason = refusal_reason(country, server_round)
                node_ledgers[country].append(EntryKind.REFUSAL, **where, reason=reason)
                run_ledger.refusal(country, server_round, reason)
                continue
            charge += 1
            job_charges[country] = job_charges.get(country, 0) + 1
            before = histories[country]
            histories[country] = compose(before, step)
            lifetime = (
                epsilon_spent(histories[country], delta=DELTA, kind=kind) if schema >= 5 else None
            )
            node_ledgers[country].append(
                EntryKind.CHARGE,
                **where,
                detail={
                    "charge": charge,
                    "dataset": datasets[country],
                    "noise_multiplier": step[0],
                    "sample_rate": step[1],
                    "steps": step[2],
                    "delta": DELTA,
                    "accountant": kind.value,
                }
                | (
                    {}
                    if lifetime is None
                    else {
                        "job_sha256": job_sha256,
                        "job_charge": job_charges[country],
                        "dataset_account": datasets[country],
                        "epsilon_dataset": lifetime,
                        "budget_epsilon": budget,
                    }
                ),
            )
            arrays = _update(country, 1 if repeat_update else server_round)
            signed = signed_record(
                fixture.signers[country],
                arrays,
                job=job,
                run=run,
                server_round=server_round,
                country=country,
                before=before,
                step=step,
                examples=examples,
                dataset=datasets[country],
                charge=charge if schema < 5 else job_charges[country],
                kind=kind,
                noise_source=noise_source,
                target=target,
                budget=budget,
                epsilon_of=epsilon_of,
                mechanism=mechanism,
                schema=schema,
                job_sha256=job_sha256 if schema >= 5 else None,
            )
            digest = update_sha256(arrays)
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
