"""Ledgers that honest nodes sign, for checking the auditor against them and understated copies.

Each pipeline's schedule is what a node runs by default (``common/config/job.py``), with the
noise its own search picks (``noise_for_target``, ``noise_after``), so the ledgers are what
honest nodes sign; only the training itself is skipped. A release is one step, checked in well
under a second (the unit tier); the longer schedules take seconds (the node tier).
"""

from __future__ import annotations

from pathlib import Path

from ledger_factory import DELTA, write_ledger
from residency.auditor.crosscheck import OPACUS_EPS_ERROR
from residency.auditor.verify import Verification, load_keys, verify_ledger
from residency.common.config.job import TRAINING_ROUNDS, WARM_START_SHARE, WARM_STARTED_HEAD
from residency.common.config.kinds import AccountantKind
from residency.common.privacy.accountant import (
    History,
    PrivacyStep,
    epsilon_spent,
    noise_after,
    noise_for_target,
)
from residency.common.privacy.sampling import poisson_schedule

PIPELINES = ("prototypes", "lora", "prototypes then head")
EXAMPLES = 400
"""Records per country: within the sizes partners have (hundreds to thousands)."""
CHEAT_TARGETS = (0.1, 1.0)
"""The targets at which a node understates what it spent."""


def honest_schedule(pipeline: str, target: float, kind: AccountantKind) -> list[PrivacyStep]:
    """Each round's mechanism, as an honest node with the default settings runs it."""
    if pipeline == "prototypes":  # one Gaussian release: one step at sample rate 1
        z = noise_for_target(
            target_epsilon=target, delta=DELTA, sample_rate=1.0, steps=1, kind=kind
        )
        return [(z, 1.0, 1)]
    if pipeline == "lora":  # DP-SGD alone: Poisson batches of 32, one epoch a round
        q, n = poisson_schedule(examples=EXAMPLES, batch_size=32)
        z = noise_for_target(
            target_epsilon=target, delta=DELTA, sample_rate=q, steps=TRAINING_ROUNDS * n, kind=kind
        )
        return [(z, q, n)] * TRAINING_ROUNDS
    # The default pipeline: the release spends its share, full-batch head rounds the rest.
    release = warm_start_release(target, delta=DELTA, kind=kind)
    rounds, epochs = WARM_STARTED_HEAD["rounds"], WARM_STARTED_HEAD["local_epochs"]
    z = noise_after(
        (release,),
        target_epsilon=target,
        delta=DELTA,
        sample_rate=1.0,
        steps=rounds * epochs,
        kind=kind,
    )
    return [release, *[(z, 1.0, epochs)] * rounds]


def warm_start_release(target: float, *, delta: float, kind: AccountantKind) -> PrivacyStep:
    """The release that warm-starts a job: one step at sample rate 1, its share of ``target``."""
    z = noise_for_target(
        target_epsilon=target * WARM_START_SHARE, delta=delta, sample_rate=1.0, steps=1, kind=kind
    )
    return (z, 1.0, 1)


def verify_schedule(
    folder: Path, schedule: list[PrivacyStep], target: float, **kwargs: object
) -> Verification:
    """Write one country's signed ledger of ``schedule`` in ``folder`` and verify it."""
    made = write_ledger(
        folder,
        countries=("DE",),
        refuse=None,
        schedule=schedule,
        target=target,
        examples=EXAMPLES,
        **kwargs,  # type: ignore[arg-type]
    )
    return verify_ledger(made.ledger, load_keys(made.keys))


def assert_an_understated_record_is_flagged(folder: Path, pipeline: str, target: float) -> None:
    """A node signs 1/1.2 of what its recorded noise spends: its real epsilon is 20% higher.

    It divides Opacus' own estimate (without the margin Opacus adds); verify must flag every
    record by dp-accounting's check, whatever Opacus says.
    """

    def understated(history: History) -> float:
        estimate = epsilon_spent(history, delta=DELTA, kind=AccountantKind.PRV) - OPACUS_EPS_ERROR
        return estimate / 1.2

    schedule = honest_schedule(pipeline, target, AccountantKind.PRV)
    result = verify_schedule(folder, schedule, target, epsilon_of=understated)
    flagged = [p for p in result.problems if "dp-accounting finds" in p.what]
    assert [p.entry for p in flagged] == [s.entry for s in result.spends], result.problems
    assert "the record understates its privacy loss" in flagged[0].what
