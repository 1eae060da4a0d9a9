"""Whether the node trains a round, and the charge that makes it count; all before training.

Every check uses the node operator's own settings and the node's durable store, never the
coordinator's word: the job may ask, the node decides. The order is the one a reader needs
to trust it:

1. :func:`admit` applies the operator's limits and policy to the round plan, reads the data
   (named in ``node.toml``, with the schema declared there; the job's columns and labels are
   compared with that schema, never with the data), fixes the signed job's noise multiplier and
   pre-checks both budgets, so a round that cannot run is refused before the node builds a
   model for it.
2. :func:`charge` repeats the budget check inside the store's write transaction, builds and
   signs a draft of the very record the reply will carry, and only then commits the charge.
   A round that passes is spent (write-ahead); a round that fails anything is refused with
   nothing charged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from residency.client.budget_store import BudgetStore, Held
from residency.client.node_config import NodeSettings
from residency.client.node_data import no_records, scan_node_data
from residency.client.policy import Policy, load_policy
from residency.common.config.job import refinable
from residency.common.config.round_plan import RoundPlan
from residency.common.data.records import LabeledTexts
from residency.common.errors import BudgetExceeded, ConfigError, DataError, PolicyViolation
from residency.common.privacy.accountant import (
    History,
    PrivacyStep,
    compose,
    epsilon_spent,
    noise_after,
    noise_for_target,
    remaining,
    within_budget,
)
from residency.common.privacy.people import People
from residency.common.privacy.unit import PrivacyUnit
from residency.common.refusal import Refusal, RefusalCode
from residency.common.updates.traits import traits_for

D = TypeVar("D")

log = logging.getLogger("residency.node")


@dataclass(frozen=True)
class Admission:
    """A round the node agreed to consider: its data, account, mechanism and limits.

    ``public_size`` is the operator's declared size (``node.toml``) in the node's privacy
    unit (records, or people), the only size of the data anything observable may depend on;
    ``len(records)`` never leaves the node. ``people`` groups the records by person under
    person-level DP (:mod:`.people`), None under record-level DP.
    ``paths`` are the job's whole histories on this node, one for each way it can run to its
    end (every round; or a release refined after the first training round): what the node
    checks the account can afford before the job's first charge, and holds for it
    (``paths[0]``) for ``hold_s`` seconds.
    """

    records: LabeledTexts
    account: str
    step: PrivacyStep
    lifetime_budget: float
    policy: Policy | None
    public_size: int
    paths: tuple[History, ...]
    hold_s: float
    people: People | None = None


@dataclass(frozen=True)
class Spend:
    """Epsilon before and after this round, for the signed job and for the dataset's account."""

    before: History  # the job's history on the account (every run of it), before this round
    step: PrivacyStep
    spent: float  # the job's epsilon before this round
    total: float  # the job's epsilon with this round
    lifetime: float  # the account's epsilon with this round (every job, every coordinator)

    @property
    def history(self) -> History:
        """The job's history with this round: what the trainer must run and the record signs."""
        return compose(self.before, self.step)


def load_records(settings: NodeSettings) -> LabeledTexts:
    """The operator's usable records, read with the schema declared in ``node.toml``.

    Unusable records are skipped (and counted in the node's log) in every round; a file that
    cannot be read, or has no usable record, is one fixed refusal, the same whatever the job
    and whichever record made it so.
    """
    try:
        scan = scan_node_data(settings)
    except DataError as exc:
        raise _no_usable_data(settings, str(exc)) from exc
    if not scan.records:
        raise _no_usable_data(settings, no_records(settings, scan, schema_fix="node.toml"))
    return scan.records


def _no_usable_data(settings: NodeSettings, why: str) -> PolicyViolation:
    """The refusal, whose sentence (kept in the node's store and ledger) quotes no record."""
    log.error("%s: data: %s", settings.country, why)  # the details: the node's log only
    return _refused(
        f"{settings.country} refused the round: its data file {settings.data} cannot be read "
        "with the schema in node.toml or has no usable record; fix (operator): see the node's "
        "log, or run `residency node start` to check the file",
        RefusalCode.NO_USABLE_DATA,
    )


@lru_cache(maxsize=8)
def _policy(path: Path, mtime_ns: int) -> Policy:
    del mtime_ns  # part of the cache key only: an edited policy is read again
    return load_policy(path)


def jurisdiction(settings: NodeSettings) -> Policy | None:
    """The operator's policy file, if ``node.toml`` names one."""
    path = settings.policy
    if path is None:
        return None
    return _policy(path, path.stat().st_mtime_ns if path.exists() else 0)


def _refused(message: str, code: RefusalCode, **values: float) -> PolicyViolation:
    return PolicyViolation(message, Refusal(code, values))


def check_operator_limits(settings: NodeSettings, plan: RoundPlan) -> None:
    """The operator's own limits come before anything the coordinator asks for."""
    who = f"{settings.country} refused job {plan.job}"
    if settings.country not in plan.countries:
        raise _refused(
            f"{who}: the job names {', '.join(plan.countries)}, not this node",
            RefusalCode.NOT_IN_JOB,
        )
    if plan.target_epsilon > settings.budget_epsilon:
        raise _refused(
            f"{who}: target epsilon {plan.target_epsilon:g} exceeds the budget "
            f"{settings.budget_epsilon:g} set by this node",
            RefusalCode.TARGET_ABOVE_BUDGET,
            target=plan.target_epsilon,
            budget=settings.budget_epsilon,
        )
    if plan.delta > settings.delta:
        raise _refused(
            f"{who}: delta {plan.delta:g} exceeds the limit {settings.delta:g} set by this node",
            RefusalCode.DELTA_ABOVE_LIMIT,
            delta=plan.delta,
            limit=settings.delta,
        )
    if not settings.may_load(plan.model):
        raise _refused(
            f"{who}: model {plan.model!r} is not minilm, tiny or a folder listed in models; "
            "fix (operator): add the checkpoint folder to models in node.toml",
            RefusalCode.MODEL_NOT_ALLOWED,
        )
    check_schema(settings, plan)


def check_schema(settings: NodeSettings, plan: RoundPlan) -> None:
    """The job's columns and labels must be the operator's declared schema, exactly.

    Compared with ``node.toml`` only, never with the data, so the answer says nothing about
    the records. The labels must agree in order too: a label's position is its class index in
    every country's update.
    """
    asked = (plan.text_column, plan.label_column, list(plan.labels))
    declared = (settings.text_column, settings.label_column, list(settings.labels))
    if asked == declared:
        return
    raise _refused(
        f"{settings.country} refused job {plan.job}: the job reads text_column "
        f"{plan.text_column!r}, label_column {plan.label_column!r}, labels {plan.labels}; "
        f"node.toml declares {settings.text_column!r}, {settings.label_column!r}, "
        f"{settings.labels}; fix: the launcher uses the federation's schema, or the operator "
        "corrects node.toml",
        RefusalCode.SCHEMA_MISMATCH,
        text_column=float(asked[0] != declared[0]),
        label_column=float(asked[1] != declared[1]),
        labels=float(asked[2] != declared[2]),
    )


def check_policy(policy: Policy, settings: NodeSettings, plan: RoundPlan, examples: int) -> None:
    """The policy's rules that depend on the job; budgets are checked with the accountant.

    ``examples`` is the declared public size: a refusal that compared the exact count would
    tell whether one record was added.
    """
    who = f"{settings.country} refused job {plan.job} under policy {policy.name}"
    if (
        policy.privacy_unit is PrivacyUnit.PERSON
        and settings.privacy_unit is not PrivacyUnit.PERSON
    ):
        raise _refused(
            f"{who}: the policy requires person-level DP; fix (operator): set privacy_unit = "
            '"person", person_column, records_per_person and public_people in node.toml',
            RefusalCode.UNIT_BELOW_POLICY,
        )
    asked = [plan.update] if plan.warm_start is None else [plan.warm_start, plan.update]
    for kind in asked:
        if kind in policy.allowed_updates:
            continue
        allowed = ", ".join(kind.value for kind in policy.allowed_updates)
        raise _refused(
            f"{who}: update {kind.value} not allowed ({allowed} only)",
            RefusalCode.UPDATE_NOT_ALLOWED,
        )
    if policy.max_delta is not None and plan.delta > policy.max_delta:
        raise _refused(
            f"{who}: delta {plan.delta:g} above {policy.max_delta:g}",
            RefusalCode.DELTA_ABOVE_POLICY,
            delta=plan.delta,
            limit=policy.max_delta,
        )
    if examples < policy.min_examples_per_round:
        raise _refused(
            f"{who}: {examples} examples, fewer than {policy.min_examples_per_round}",
            RefusalCode.TOO_FEW_EXAMPLES,
            examples=examples,
            minimum=policy.min_examples_per_round,
        )


def _people(settings: NodeSettings, records: LabeledTexts) -> People | None:
    """The records grouped by person, each capped, under person-level DP (else None)."""
    if settings.privacy_unit is not PrivacyUnit.PERSON:
        return None
    if records.people is None or settings.records_per_person is None:
        raise ConfigError(f"{settings.country}: person-level data read without person ids")
    return People.of(records.people, settings.records_per_person)


def check_unit(settings: NodeSettings, units: set[str], refused: str) -> None:
    """Refuse to charge an account in another privacy unit than its earlier charges.

    Epsilons per record and per person do not compose into one guarantee: a record's
    neighbour is not a person's. The account's first charge fixes its unit; after a change
    of ``privacy_unit`` the operator opens a new account (``node budget reset``).
    """
    other = sorted(units - {settings.privacy_unit.value})
    if other:
        raise _refused(
            f"{refused}: the budget account of dataset {settings.dataset_name} holds charges "
            f"per {other[0]}, and node.toml now says privacy_unit = "
            f'"{settings.privacy_unit.value}"; epsilons of two units do not compose; fix '
            "(operator): set privacy_unit back, or open a new account with `residency node "
            "budget reset`",
            RefusalCode.UNIT_MIXED,
        )


def _check_budget(
    refusal: str, code: RefusalCode, budget: float, spent: float, projected: float
) -> None:
    if not within_budget(projected, budget):
        raise BudgetExceeded(
            f"{refusal} {budget:.2f}, spent {spent:.2f}, round needs {projected - spent:.2f}",
            Refusal(code, {"budget": budget, "spent": spent, "needed": projected - spent}),
        )


def spend(
    settings: NodeSettings,
    plan: RoundPlan,
    admission: Admission,
    *,
    job_history: History,
    account_history: History,
    held: Held,
) -> Spend:
    """This round's cost against both budgets; ``BudgetExceeded`` if either would break.

    A release (a once-per-job step) must be the job's first charge: checked here, inside
    the charging transaction, so two copies of round 1 cannot both release. A job that holds
    no reservation (its first charge here, or its hold lapsed) must fit whole first
    (:func:`check_affordable`); one that holds it was checked whole when it was held.
    """
    step, kind, delta = admission.step, plan.accountant, plan.delta
    refused = f"{settings.country} refused round {plan.server_round}"
    check_release_order(plan, job_history, refused)
    spent = epsilon_spent(job_history, delta=delta, kind=kind)
    total = epsilon_spent(compose(job_history, step), delta=delta, kind=kind)
    _check_budget(
        f"{refused}: job budget", RefusalCode.JOB_BUDGET, plan.target_epsilon, spent, total
    )
    if not held.own:
        check_affordable(
            plan,
            admission,
            refused,
            job_history=job_history,
            account_history=account_history,
            held=held,
        )
    lifetime_before = epsilon_spent(account_history, delta=delta, kind=kind)
    lifetime = epsilon_spent(compose(account_history, step), delta=delta, kind=kind)
    _check_budget(
        f"{refused}: dataset budget",
        RefusalCode.DATASET_BUDGET,
        admission.lifetime_budget,
        lifetime_before,
        lifetime,
    )
    return Spend(job_history, step, spent, total, lifetime)


def check_affordable(
    plan: RoundPlan,
    admission: Admission,
    refused: str,
    *,
    job_history: History,
    account_history: History,
    held: Held,
) -> None:
    """Refuse a job the dataset's account cannot carry to its end, before any charge of it.

    Every way the job can still run (``admission.paths``, less what it has charged) is
    composed with the account's charges and with every other job's live reservation, by the
    job's own accountant. A job that could start but not finish would spend budget on rounds
    that never make a model; refused here, it costs nothing. From the operator's budget, the
    store and the public size only: the same answer with or without any one record.
    """
    kind, delta = plan.accountant, plan.delta
    committed_history = (*account_history, *held.others)
    committed = epsilon_spent(committed_history, delta=delta, kind=kind)
    needed = max(
        epsilon_spent((*committed_history, *remaining(path, job_history)), delta=delta, kind=kind)
        for path in admission.paths
    )
    if within_budget(needed, admission.lifetime_budget):
        return
    raise BudgetExceeded(
        f"{refused}: the whole job does not fit the dataset budget "
        f"{admission.lifetime_budget:.2f} ({committed:.2f} spent or held for other jobs, "
        f"the job needs {needed - committed:.2f} more); nothing was charged",
        Refusal(
            RefusalCode.JOB_UNAFFORDABLE,
            {
                "budget": admission.lifetime_budget,
                "committed": committed,
                "needed": needed - committed,
            },
        ),
    )


def check_release_order(plan: RoundPlan, job_history: History, refused: str) -> None:
    """A job's release is its first charge; a refine (the release again) follows a charge.

    From the job's own charges, never from the data: the same outcome with or without a record.
    """
    if not traits_for(plan.round_update).is_release:
        return
    if plan.refine and not job_history:
        raise _refused(
            f"{refused}: a refining release follows the job's release", RefusalCode.INVALID_PLAN
        )
    if job_history and not plan.refine:
        raise _refused(
            f"{refused}: a release must be the job's first charge", RefusalCode.INVALID_PLAN
        )


WARM_START_PHASE = "warm-start"
REFINE_PHASE = "refine"
PLANNED_REFINE_PHASE = "refine-planned"


def _noise(
    plan: RoundPlan,
    refused: str,
    sample_rate: float,
    steps: int,
    prior: History,
    *,
    target: float | None = None,
) -> float:
    """The noise multiplier whose ``steps`` after ``prior`` spend the target, or a refusal."""
    target = plan.target_epsilon if target is None else target
    try:
        if not prior:
            return noise_for_target(
                target_epsilon=target,
                delta=plan.delta,
                sample_rate=sample_rate,
                steps=steps,
                kind=plan.accountant,
            )
        return noise_after(
            prior,
            target_epsilon=target,
            delta=plan.delta,
            sample_rate=sample_rate,
            steps=steps,
            kind=plan.accountant,
        )
    except ValueError as exc:  # Opacus: "The privacy budget is too low."
        raise BudgetExceeded(
            f"{refused}: no noise multiplier reaches target epsilon {target:g} "
            f"in {steps} steps ({exc})",
            Refusal(RefusalCode.TARGET_UNREACHABLE, {"target": target}),
        ) from exc


def warm_start_step(
    plan: RoundPlan, store: BudgetStore, *, job_account: str, account: str, refused: str
) -> PrivacyStep:
    """The warm start's release as one accountant step, its noise fixed at first use.

    The release spends ``warm_start_share`` of the target in its one step. Training rounds
    compose after it: their noise is the smallest whose steps, after the release, reach the
    whole target (:func:`noise_after`), so the split wastes nothing to loose composition.
    """
    if plan.warm_start is None:
        raise ValueError("the plan has no warm start")
    sample_rate, steps = traits_for(plan.warm_start).schedule(
        examples=1, batch_size=plan.batch_size, local_epochs=plan.local_epochs
    )
    noise = store.noise_for(
        job_account=job_account,
        dataset=account,
        phase=WARM_START_PHASE,
        derive=lambda: _noise(
            plan,
            refused,
            sample_rate,
            steps,
            (),
            target=plan.target_epsilon * plan.warm_start_share,
        ),
    )
    return (noise, sample_rate, steps)


def admit(
    settings: NodeSettings, plan: RoundPlan, store: BudgetStore, *, job_account: str
) -> Admission:
    """Apply the operator's limits, policy and both budgets; refuse before any charge.

    ``job_account`` is the signed job's hash: the job's target is spent across every Flower
    run that carries it.
    """
    check_operator_limits(settings, plan)
    policy = jurisdiction(settings)
    records = load_records(settings)
    examples = settings.public_size  # never len(records): see Admission
    if policy is not None:
        check_policy(policy, settings, plan, examples)
    refused = f"{settings.country} refused round {plan.server_round}"
    if plan.delta >= 1.0 / examples:
        raise BudgetExceeded(
            f"{refused}: delta {plan.delta:g} is not below 1/{examples} examples",
            Refusal(
                RefusalCode.DELTA_TOO_LARGE_FOR_DATA, {"delta": plan.delta, "examples": examples}
            ),
        )
    sample_rate, round_steps = traits_for(plan.round_update).schedule(
        examples=examples, batch_size=plan.batch_size, local_epochs=plan.local_epochs
    )
    train_rate, train_steps = traits_for(plan.update).schedule(
        examples=examples, batch_size=plan.batch_size, local_epochs=plan.local_epochs
    )
    account = store.account(settings.dataset_name, settings.data)
    check_unit(settings, store.units(account), refused)
    release: PrivacyStep | None = None
    if plan.warm_start is not None:
        release = warm_start_step(
            plan, store, job_account=job_account, account=account, refused=refused
        )
    training = store.noise_for(
        job_account=job_account,
        dataset=account,
        derive=lambda: _noise(
            plan,
            refused,
            train_rate,
            plan.rounds * train_steps,
            () if release is None else (release,),
        ),
    )
    paths = _paths(
        plan,
        store,
        release,
        (training, train_rate, train_steps),
        job_account=job_account,
        account=account,
        refused=refused,
    )
    if release is None:
        noise = training
    elif plan.refine:  # the release again, spending whatever the job has left
        history = store.history(account, job_account=job_account)
        check_release_order(plan, history, refused)  # before a noise that ignores it is fixed
        noise = store.noise_for(
            job_account=job_account,
            dataset=account,
            phase=REFINE_PHASE,
            derive=lambda: _noise(plan, refused, 1.0, 1, history),
        )
    elif plan.round_update is plan.warm_start:
        noise = release[0]
    else:
        noise = training
    # The policy's floor binds every mechanism the job will run, not only this round's: a
    # release whose training would fall below it is refused before the release is spent.
    lowest = min(noise, *(z for z, _, _ in paths[0]))
    if policy is not None and lowest < (policy.min_noise_multiplier or 0.0):
        raise _refused(
            f"{refused}: noise multiplier {lowest:.3f} below the minimum "
            f"{policy.min_noise_multiplier:g} of policy {policy.name}",
            RefusalCode.NOISE_BELOW_POLICY,
            noise=lowest,
            minimum=policy.min_noise_multiplier or 0.0,
        )
    lifetime_budget = settings.budget_epsilon
    if policy is not None and policy.max_epsilon_per_dataset is not None:
        lifetime_budget = min(lifetime_budget, policy.max_epsilon_per_dataset)
    admission = Admission(
        records,
        account,
        (noise, sample_rate, round_steps),
        lifetime_budget,
        policy,
        examples,
        paths,
        settings.reservation_hours * 3600.0,
        people=_people(settings, records),
    )
    spend(  # an early refusal; charge() checks again under the store's lock
        settings,
        plan,
        admission,
        job_history=store.history(account, job_account=job_account),
        account_history=store.history(account),
        held=store.held(account, job_account=job_account),
    )
    return admission


def _paths(
    plan: RoundPlan,
    store: BudgetStore,
    release: PrivacyStep | None,
    training_round: PrivacyStep,
    *,
    job_account: str,
    account: str,
    refused: str,
) -> tuple[History, ...]:
    """Every whole history the job can have here: all its rounds, or a refined release.

    The refined path's noise is what a refine after one training round would take; it is
    kept under its own phase so it is derived once, and never fixes the real refine's noise,
    which is derived from the job's real history when the refine comes.
    """
    noise, rate, steps = training_round
    if release is None:
        return (((noise, rate, plan.rounds * steps),),)
    if plan.update is plan.warm_start:
        return ((release,),)
    whole = compose((release,), (noise, rate, plan.rounds * steps))
    if not refinable(plan.update, plan.warm_start) or plan.rounds < 2:
        return (whole,)
    first = compose((release,), training_round)
    refine = store.noise_for(
        job_account=job_account,
        dataset=account,
        phase=PLANNED_REFINE_PHASE,
        derive=lambda: _noise(plan, refused, 1.0, 1, first),
    )
    return (whole, compose(first, (refine, 1.0, 1)))


def confirm(
    settings: NodeSettings, plan: RoundPlan, store: BudgetStore, *, job_account: str
) -> Admission:
    """Agree to the whole job before any of it is charged, and hold its budget; or refuse.

    Everything :func:`admit` checks for the round the coordinator is about to start, then
    the whole job against the dataset's budget (:func:`check_affordable`) and, in the same
    store transaction, the reservation that keeps other jobs off what this one needs.
    Nothing is charged and nothing is trained.
    """
    admission = admit(settings, plan, store, job_account=job_account)

    def check(job_history: History, account_history: History, held: Held) -> None:
        if not held.own:
            check_affordable(
                plan,
                admission,
                f"{settings.country} refused job {plan.job}",
                job_history=job_history,
                account_history=account_history,
                held=held,
            )

    store.reserve_within(
        job_account=job_account,
        dataset=admission.account,
        planned=admission.paths[0],
        delta=plan.delta,
        accountant=plan.accountant.value,
        hold_s=admission.hold_s,
        check=check,
    )
    return admission


def charge(
    settings: NodeSettings,
    plan: RoundPlan,
    admission: Admission,
    store: BudgetStore,
    *,
    run: str,
    job_account: str,
    draft: Callable[[Spend], D],
) -> tuple[int, Spend, D]:
    """Check the budgets again and charge the round, atomically; (charge id, spend, draft).

    ``draft`` builds and checks everything the node will sign for this spend (raising if it
    would not validate), inside the transaction: a round whose record could not be signed
    is never charged.
    """

    def check(job_history: History, account_history: History, held: Held) -> tuple[Spend, D]:
        got = spend(
            settings,
            plan,
            admission,
            job_history=job_history,
            account_history=account_history,
            held=held,
        )
        return got, draft(got)

    charge_id, (spent, drafted) = store.charge_within(
        run=run,
        job=plan.job,
        job_account=job_account,
        server_round=plan.server_round,
        dataset=admission.account,
        step=admission.step,
        delta=plan.delta,
        accountant=plan.accountant.value,
        planned=admission.paths[0],
        hold_s=admission.hold_s,
        check=check,
        unit=settings.privacy_unit.value,
    )
    return charge_id, spent, drafted
