"""The Flower ClientApp a country node runs: validate, account, train privately, reply.

The node decides everything privacy-relevant itself: its data path comes from its own
settings file, the noise multiplier from its own dataset size and the job's target, and it
refuses a round whose projected epsilon would exceed the target.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.client.egress import egress_guard
from residency.client.node_config import NodeSettings, load_node_settings, node_settings_path
from residency.client.policy import Policy, load_policy
from residency.client.token_cache import encoded
from residency.client.trainer import (
    DpSgdSettings,
    LocalSchedule,
    dp_mode_for,
    round_seed,
    train_dp_round,
)
from residency.client.warm_model import classifier_for, forget
from residency.common import wire
from residency.common.clock import now
from residency.common.config.round_plan import RoundPlan
from residency.common.data.readers import read_labeled_texts
from residency.common.data.records import LabeledTexts
from residency.common.device import pick_compute
from residency.common.errors import BudgetExceeded, ConfigError, DataError, PolicyViolation
from residency.common.model import (
    ModelSpec,
    load_tokenizer,
    load_trainable_state,
    on_the_wire,
    trainable_state,
)
from residency.common.privacy.accountant import (
    History,
    PrivacyStep,
    compose,
    epsilon_spent,
    noise_for_target,
    poisson_schedule,
)
from residency.common.privacy.ledger import EntryKind, Ledger
from residency.common.privacy.record import PrivacyRecord, sign_record
from residency.common.privacy.signing import Signer, load_or_create_signer
from residency.common.privacy.update_digest import update_sha256
from residency.common.version import __version__

log = logging.getLogger("residency.node")

app = ClientApp()


@lru_cache(maxsize=4)
def _records(
    path: Path, mtime_ns: int, text: str, label: str, labels: tuple[str, ...]
) -> LabeledTexts:
    del mtime_ns  # part of the cache key only: an edited file is read again
    return read_labeled_texts(path, text_column=text, label_column=label, labels=labels)


def _load_records(settings: NodeSettings, plan: RoundPlan) -> LabeledTexts:
    path = settings.data
    mtime = path.stat().st_mtime_ns if path.exists() else 0
    return _records(path, mtime, plan.text_column, plan.label_column, tuple(plan.labels))


@lru_cache(maxsize=8)
def _log_to(path: Path) -> None:
    """Send this process's node log to the operator's file (once per path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("residency", "flwr"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("residency").setLevel(logging.INFO)


def _spec(plan: RoundPlan) -> ModelSpec:
    return ModelSpec(
        source=plan.model,
        labels=tuple(plan.labels),
        update=plan.update,
        lora_rank=plan.lora_rank,
        lora_alpha=plan.lora_alpha,
        lora_targets=tuple(plan.lora_targets),
        seed=plan.seed,
    )


def _check_policy(settings: NodeSettings, plan: RoundPlan) -> None:
    """The operator's own limits come before anything the coordinator asks for."""
    who = f"{settings.country} refused job {plan.job}"
    if settings.country not in plan.countries:
        raise PolicyViolation(f"{who}: the job names {', '.join(plan.countries)}, not this node")
    if plan.target_epsilon > settings.budget_epsilon:
        raise PolicyViolation(
            f"{who}: target epsilon {plan.target_epsilon:g} exceeds the budget "
            f"{settings.budget_epsilon:g} set by this node"
        )
    if plan.delta > settings.delta:
        raise PolicyViolation(
            f"{who}: delta {plan.delta:g} exceeds the limit {settings.delta:g} set by this node"
        )


def _check_budget(
    refusal: str, budget: float, history: History, step: PrivacyStep, plan: RoundPlan
) -> float:
    """Epsilon already spent; refuse if this round would take the total past ``budget``."""
    spent = epsilon_spent(history, delta=plan.delta, kind=plan.accountant)
    projected = epsilon_spent(compose(history, step), delta=plan.delta, kind=plan.accountant)
    if projected > budget * 1.0001:
        raise BudgetExceeded(
            f"{refusal} {budget:.2f}, spent {spent:.2f}, round needs {projected - spent:.2f}"
        )
    return spent


@dataclass(frozen=True)
class _Admitted:
    """A round the node agreed to train: its data, dataset, cost and this run's history."""

    records: LabeledTexts
    dataset: str
    step: PrivacyStep
    before: History
    spent: float
    lifetime: float
    policy: Policy | None


@lru_cache(maxsize=8)
def _policy(path: Path, mtime_ns: int) -> Policy:
    del mtime_ns  # part of the cache key only: an edited policy is read again
    return load_policy(path)


def _jurisdiction(settings: NodeSettings) -> Policy | None:
    path = settings.policy
    if path is None:
        return None
    return _policy(path, path.stat().st_mtime_ns if path.exists() else 0)


def _check_jurisdiction(
    policy: Policy, settings: NodeSettings, plan: RoundPlan, examples: int
) -> None:
    """The policy's rules that depend on the job; budgets are checked with the accountant."""
    who = f"{settings.country} refused job {plan.job} under policy {policy.name}"
    if plan.update not in policy.allowed_updates:
        allowed = ", ".join(kind.value for kind in policy.allowed_updates)
        raise PolicyViolation(f"{who}: update {plan.update.value} not allowed ({allowed} only)")
    if policy.max_delta is not None and plan.delta > policy.max_delta:
        raise PolicyViolation(f"{who}: delta {plan.delta:g} above {policy.max_delta:g}")
    if examples < policy.min_examples_per_round:
        raise PolicyViolation(
            f"{who}: {examples} examples, fewer than {policy.min_examples_per_round}"
        )


def _admit(settings: NodeSettings, plan: RoundPlan, store: BudgetStore, run: str) -> _Admitted:
    """Apply the operator's policy and both budgets (this job's, the dataset's lifetime)."""
    _check_policy(settings, plan)
    policy = _jurisdiction(settings)
    records = _load_records(settings, plan)
    examples = len(records)
    if policy is not None:
        _check_jurisdiction(policy, settings, plan, examples)
    if plan.delta >= 1.0 / examples:
        raise BudgetExceeded(
            f"{settings.country} refused round {plan.server_round}: delta {plan.delta:g} is not "
            f"below 1/{examples} examples"
        )
    sample_rate, steps_per_epoch = poisson_schedule(examples=examples, batch_size=plan.batch_size)
    round_steps = plan.local_epochs * steps_per_epoch
    dataset = records.fingerprint()
    noise = store.noise_for(
        run=run,
        dataset=dataset,
        derive=lambda: noise_for_target(
            target_epsilon=plan.target_epsilon,
            delta=plan.delta,
            sample_rate=sample_rate,
            steps=plan.rounds * round_steps,
            kind=plan.accountant,
        ),
    )
    step = (noise, sample_rate, round_steps)
    refused = f"{settings.country} refused round {plan.server_round}"
    if policy is not None and noise < (policy.min_noise_multiplier or 0.0):
        raise PolicyViolation(
            f"{refused}: noise multiplier {noise:.3f} below the minimum "
            f"{policy.min_noise_multiplier:g} of policy {policy.name}"
        )
    before = store.history(dataset, run=run)
    spent = _check_budget(f"{refused}: job budget", plan.target_epsilon, before, step, plan)
    lifetime = settings.budget_epsilon
    if policy is not None and policy.max_epsilon_per_dataset is not None:
        lifetime = min(lifetime, policy.max_epsilon_per_dataset)
    _check_budget(f"{refused}: dataset budget", lifetime, store.history(dataset), step, plan)
    return _Admitted(records, dataset, step, before, spent, lifetime, policy)


def _signer(settings: NodeSettings) -> Signer:
    return load_or_create_signer(
        settings.record_key, comment=f"residency-record-{settings.country}"
    )


def _train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    settings = load_node_settings(node_settings_path(dict(context.node_config)))
    if settings.log is not None:
        _log_to(settings.log)
    plan = RoundPlan.from_record(msg.content.config_records[wire.CONFIG])
    store = BudgetStore(settings.state / STORE_FILE)
    signer = _signer(settings)
    ledger = Ledger(settings.ledger, signer)  # the node's own copy of what it spent and signed
    run = str(context.run_id)
    where = {"run": run, "job": plan.job, "country": settings.country, "round": plan.server_round}
    try:
        admitted = _admit(settings, plan, store, run)
    except (BudgetExceeded, PolicyViolation) as exc:
        store.refuse(
            run=run, job=plan.job, server_round=plan.server_round, dataset=None, reason=str(exc)
        )
        ledger.append(EntryKind.REFUSAL, **where, reason=str(exc))
        raise
    records, dataset, step = admitted.records, admitted.dataset, admitted.step
    before, spent, noise = admitted.before, admitted.spent, admitted.step[0]
    examples = len(records)

    warm = classifier_for(_spec(plan))
    model = warm.model
    if warm.fingerprint != plan.base_fingerprint:
        raise ConfigError(
            f"{settings.country}: model {plan.model!r}: local base weights differ from the "
            "coordinator's; fix: install the same checkpoint on every node"
        )
    load_trainable_state(model, _received_arrays(msg))
    data = encoded(
        records, load_tokenizer(plan.model), max_length=plan.max_length, folder=settings.state
    )
    charge = store.charge(  # write-ahead: from here on the round counts as spent
        run=run,
        job=plan.job,
        server_round=plan.server_round,
        dataset=dataset,
        step=step,
        delta=plan.delta,
        accountant=plan.accountant.value,
    )
    ledger.append(
        EntryKind.CHARGE,
        **where,
        detail={
            "charge": charge,
            "dataset": dataset,
            "noise_multiplier": noise,
            "sample_rate": step[1],
            "steps": step[2],
            "delta": plan.delta,
            "accountant": plan.accountant.value,
        },
    )
    outcome = train_dp_round(
        model,
        data,
        schedule=LocalSchedule(
            epochs=plan.local_epochs,
            batch_size=plan.batch_size,
            learning_rate=plan.learning_rate,
            seed=round_seed(plan.seed, plan.server_round, settings.country),
        ),
        dp=DpSgdSettings(
            noise_multiplier=noise,
            max_grad_norm=plan.max_grad_norm,
            accountant=plan.accountant,
            grad_sample_mode=dp_mode_for(plan.update),
        ),
        history=before,
        compute=pick_compute(),
    )
    store.trained(charge)
    if outcome.history != compose(before, step):
        raise ConfigError(f"{settings.country}: trainer ran other steps than charged {step}")
    total = epsilon_spent(outcome.history, delta=plan.delta, kind=plan.accountant)
    lifetime = epsilon_spent(store.history(dataset), delta=plan.delta, kind=plan.accountant)
    log.info(
        "%s round %d: eps %.3f (+%.3f), dataset %.3f of %.3f",
        settings.country,
        plan.server_round,
        total,
        total - spent,
        lifetime,
        admitted.lifetime,
    )

    update = ArrayRecord(
        {
            name: Array(value)
            for name, value in on_the_wire(trainable_state(model), plan.transfer_dtype).items()
        }
    )
    sent_hash = update_sha256({name: array.numpy() for name, array in update.items()})
    policy = admitted.policy
    signed = sign_record(
        PrivacyRecord(
            job=plan.job,
            run=run,
            round=plan.server_round,
            node=int(context.node_id),
            country=settings.country,
            dataset=dataset,
            examples=examples,
            noise_multiplier=noise,
            sample_rate=step[1],
            steps=step[2],
            max_grad_norm=plan.max_grad_norm,
            accountant=plan.accountant,
            delta=plan.delta,
            history=list(outcome.history),
            epsilon_round=total - spent,
            epsilon=total,
            target_epsilon=plan.target_epsilon,
            epsilon_dataset=lifetime,
            budget_epsilon=admitted.lifetime,
            policy=None if policy is None else policy.digest(),
            policy_name=None if policy is None else policy.name,
            version=__version__,
            update_sha256=sent_hash,
            charge=charge,
            signed_at=now(),
            key=signer.public_hex,
        ),
        signer,
    )
    ledger.append(EntryKind.RECORD, **where, record=signed, received_sha256=sent_hash)
    metrics = MetricRecord(
        {
            wire.NUM_EXAMPLES: examples,
            wire.TRAIN_LOSS: outcome.mean_loss,
            wire.STEPS: outcome.steps,
            wire.EPSILON: total,
            wire.EPSILON_ROUND: total - spent,
            wire.DELTA: plan.delta,
            wire.NOISE_MULTIPLIER: noise,
            wire.SAMPLE_RATE: outcome.sample_rate,
            wire.MAX_GRAD_NORM: plan.max_grad_norm,
            wire.TRAIN_SECONDS: time.perf_counter() - started,
        }
    )
    node = ConfigRecord(
        {
            wire.COUNTRY: settings.country,
            wire.ACCOUNTANT: plan.accountant.value,
            wire.DATASET_FINGERPRINT: dataset,
            wire.VERSION: __version__,
        }
    )
    record = ConfigRecord({wire.RECORD_BODY: signed.body, wire.RECORD_SIGNATURE: signed.signature})
    return Message(
        RecordDict(
            {wire.ARRAYS: update, wire.METRICS: metrics, wire.NODE: node, wire.RECORD: record}
        ),
        reply_to=msg,
    )


def _train_keeping_model(msg: Message, context: Context) -> Message:
    try:
        return _train(msg, context)
    except BaseException:
        forget()  # a failed round may leave the kept model half-loaded or half-trained
        raise


def _received_arrays(msg: Message) -> dict[str, np.ndarray]:
    record = msg.content.array_records[wire.ARRAYS]
    return {name: array.numpy() for name, array in record.items()}


@app.train(mods=[egress_guard])
def train(msg: Message, context: Context) -> Message:
    """Train one round; refusals and local faults become error replies with safe reasons."""
    try:
        return _train_keeping_model(msg, context)
    except (BudgetExceeded, PolicyViolation) as exc:
        log.warning("%s", exc)
        return Message(Error(wire.REFUSED, str(exc)), reply_to=msg)
    except (ConfigError, DataError) as exc:
        log.error("%s", exc)
        return Message(Error(wire.NODE_FAULT, "node configuration or data invalid"), reply_to=msg)
