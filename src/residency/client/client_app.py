"""The Flower ClientApp a country node runs: admit, charge, train privately, reply.

The node decides everything privacy-relevant itself, from its operator's ``node.toml`` and
its own durable store: which data (and so which budget account), the noise multiplier (from
its dataset size and the job's target), whether the round fits both budgets, and the
randomness of sampling and noise (fresh OS entropy each round). :func:`_train` reads in the
order a round runs: admission (:mod:`.admission`), then model and data, then the one place
the budget is charged, then DP-SGD (:mod:`.trainer`, seeded by :mod:`.randomness`) or, for
``update = "prototypes"``, the one release (:mod:`.prototype_release`), then the reply and
its signed record (:mod:`.reply`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from residency.client import admission as admission_steps
from residency.client.admission import Admission, Spend
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.client.egress import egress_guard
from residency.client.job_trust import signed_plan
from residency.client.mechanism_check import checked
from residency.client.node_config import (
    NodeSettings,
    load_node_settings,
    node_settings_path,
    warn_if_far,
)
from residency.client.prototype_release import release_prototypes
from residency.client.randomness import round_randomness
from residency.client.reply import draft_record, training_reply
from residency.client.token_cache import encoded
from residency.client.trainer import LocalSchedule, dp_mode_for, train_dp_round
from residency.client.warm_model import classifier_for, forget
from residency.common import wire
from residency.common.classifier_head import classifier_head
from residency.common.config.kinds import GradSampleMode
from residency.common.config.round_plan import RoundPlan
from residency.common.device import pick_compute
from residency.common.errors import (
    BudgetExceeded,
    ConfigError,
    DataError,
    InvalidUpdate,
    PolicyViolation,
    Refused,
)
from residency.common.model import (
    ModelSpec,
    check_weight_bound,
    load_tokenizer,
    load_trainable_state,
    on_the_wire,
    set_feature_transform,
    trainable_state,
)
from residency.common.privacy.dp_sgd import DpSgdSettings
from residency.common.privacy.ledger import EntryKind, Ledger
from residency.common.privacy.mechanism_log import MechanismLog
from residency.common.privacy.record import NoiseSource, PrivacyRecord
from residency.common.privacy.signing import Signer, load_or_create_signer
from residency.common.refusal import Refusal, RefusalCode
from residency.common.updates import prototypes
from residency.common.updates.traits import traits_for

log = logging.getLogger("residency.node")

app = ClientApp()


@lru_cache(maxsize=8)
def _log_to(path: Path) -> None:
    """Send this process's node log to the operator's file (once per path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("residency", "flwr"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("residency").setLevel(logging.INFO)


def _signer(settings: NodeSettings) -> Signer:
    return load_or_create_signer(
        settings.record_key, comment=f"residency-record-{settings.country}"
    )


def _plan(record: Any, country: str) -> RoundPlan:
    """The coordinator's round plan, or a refusal: an out-of-bounds plan is never charged."""
    try:
        return RoundPlan.from_record(record)
    except ConfigError as exc:
        raise PolicyViolation(
            f"{country} refused a round: {exc}", Refusal(RefusalCode.INVALID_PLAN)
        ) from exc


def _check_received(msg: Message, country: str) -> None:
    """Refuse arrays outside the node's bounds before any charge, from the message alone."""
    try:
        check_weight_bound(_received_arrays(msg))
    except ValueError as exc:
        raise PolicyViolation(
            f"{country} refused a round: {exc}", Refusal(RefusalCode.INVALID_PLAN)
        ) from exc


def _refuse(exc: Refused, *, store: BudgetStore, ledger: Ledger, where: dict[str, Any]) -> None:
    """Remember a refusal in the store (``node status``) and the node's ledger."""
    store.refuse(
        run=where["run"],
        job=where["job"],
        server_round=where["round"],
        dataset=None,
        reason=str(exc),
        code=exc.refusal.code.value,
    )
    ledger.append(EntryKind.REFUSAL, **where, reason=str(exc))


def _charge(
    context: Context,
    settings: NodeSettings,
    plan: RoundPlan,
    admitted: Admission,
    store: BudgetStore,
    signer: Signer,
    noise_source: NoiseSource,
    *,
    job_account: str,
    dataset_account: str,
) -> tuple[int, Spend, PrivacyRecord]:
    """Charge the round write-ahead, with the record it will sign drafted and checked first."""
    run = str(context.run_id)

    def draft(spend: Spend) -> PrivacyRecord:
        try:
            return draft_record(
                settings=settings,
                plan=plan,
                admission=admitted,
                spend=spend,
                run=run,
                node_id=int(context.node_id),
                noise_source=noise_source,
                signer=signer,
                dataset_account=dataset_account,
            )
        except (ValueError, InvalidUpdate) as exc:
            raise PolicyViolation(
                f"{settings.country} refused round {plan.server_round}: its record would not "
                f"validate ({exc})",
                Refusal(RefusalCode.INVALID_PLAN),
            ) from exc

    return admission_steps.charge(
        settings, plan, admitted, store, run=run, job_account=job_account, draft=draft
    )


@dataclass(frozen=True)
class _Received:
    """A message's plan as the node read it, with what answering it needs."""

    settings: NodeSettings
    plan: RoundPlan
    job_account: str
    launcher: str
    store: BudgetStore
    signer: Signer
    ledger: Ledger
    where: dict[str, Any]


def _receive(msg: Message, context: Context) -> _Received:
    """Read the operator's settings and the coordinator's plan; refuse a plan not as signed."""
    settings = load_node_settings(node_settings_path(dict(context.node_config)))
    if settings.log is not None:
        _log_to(settings.log)
    record = msg.content.config_records[wire.CONFIG]
    store = BudgetStore(settings.state / STORE_FILE)
    signer = _signer(settings)
    ledger = Ledger(settings.ledger, signer)  # the node's own copy of what it spent and signed
    asked_round = record.get(wire.SERVER_ROUND)
    where: dict[str, Any] = {
        "run": str(context.run_id),
        "job": str(record.get("job", "?"))[:64],
        "country": settings.country,
        "round": asked_round if isinstance(asked_round, int) else 0,
    }
    try:
        plan = _plan(record, settings.country)
        signed = signed_plan(plan, record, settings)  # a launcher the operator trusts, as signed
        _check_received(msg, settings.country)
    except Refused as exc:
        _refuse(exc, store=store, ledger=ledger, where=where)
        raise
    return _Received(settings, plan, signed.sha256, signed.launcher, store, signer, ledger, where)


def _train(msg: Message, context: Context) -> Message:
    got = _receive(msg, context)
    if got.plan.job_ended:
        exc = PolicyViolation(
            f"{got.settings.country} refused round {got.plan.server_round}: a job's end is a "
            "query, not a round",
            Refusal(RefusalCode.INVALID_PLAN),
        )
        _refuse(exc, store=got.store, ledger=got.ledger, where=got.where)
        raise exc
    arrived = time.monotonic()
    with got.store.node_lock():  # one round trains at a time; another job's waits here
        waited = time.monotonic() - arrived
        if waited > msg.metadata.ttl:  # its round closed meanwhile: charging it would waste
            closed = PolicyViolation(
                f"{got.settings.country} refused round {got.plan.server_round}: its round "
                f"closed while the node trained another ({waited:.0f} s > {msg.metadata.ttl:g} s)",
                Refusal(RefusalCode.ROUND_CLOSED, {"waited": waited}),
            )
            _refuse(closed, store=got.store, ledger=got.ledger, where=got.where)
            raise closed
        with got.store.job_lock(got.job_account):  # one message of a signed job at a time
            return _train_job(
                msg,
                context,
                got.settings,
                got.plan,
                got.job_account,
                got.store,
                got.signer,
                got.ledger,
                got.where,
                launcher=got.launcher,
            )


def _confirm(msg: Message, context: Context) -> Message:
    """Agree to the whole job and hold its budget (:func:`admission.confirm`), charging nothing."""
    got = _receive(msg, context)
    node = ConfigRecord({wire.COUNTRY: got.settings.country})
    if got.plan.job_ended:  # frees only budget; whoever sends it, nothing is spent or shown
        with got.store.job_lock(got.job_account):
            freed = got.store.free(got.job_account)
        log.info("%s: job %s ended; freed %d hold(s)", got.settings.country, got.plan.job, freed)
        return Message(RecordDict({wire.NODE: node}), reply_to=msg)
    with got.store.job_lock(got.job_account):
        try:
            admitted = admission_steps.confirm(
                got.settings, got.plan, got.store, job_account=got.job_account
            )
        except Refused as exc:
            _refuse(exc, store=got.store, ledger=got.ledger, where=got.where)
            raise
    log.info(
        "%s confirmed job %s (target eps %g) and holds its budget on the dataset for %g h",
        got.settings.country,
        got.plan.job,
        got.plan.target_epsilon,
        admitted.hold_s / 3600,
    )
    return Message(RecordDict({wire.NODE: node}), reply_to=msg)


def _train_job(
    msg: Message,
    context: Context,
    settings: NodeSettings,
    plan: RoundPlan,
    job_account: str,
    store: BudgetStore,
    signer: Signer,
    ledger: Ledger,
    where: dict[str, Any],
    *,
    launcher: str,
) -> Message:
    try:
        admitted = admission_steps.admit(settings, plan, store, job_account=job_account)
    except Refused as exc:
        _refuse(exc, store=store, ledger=ledger, where=where)
        raise
    warn_if_far(settings, len(admitted.records), log)

    # Model and data before the charge: a fault here costs no budget.
    warm = classifier_for(ModelSpec.from_plan(plan))
    model = warm.model
    if warm.fingerprint != plan.base_fingerprint:
        raise ConfigError(
            f"{settings.country}: model {plan.model!r}: local base weights differ from the "
            "coordinator's; fix: install the same checkpoint on every node"
        )
    release = traits_for(plan.round_update).is_release
    if plan.warm_start is not None:  # a release reads raw features; training, standardised ones
        transform = None if release else plan.centre_and_scale
        set_feature_transform(
            model, *((None, None) if transform is None else map(torch.from_numpy, transform))
        )
    if release:  # a release reads no weights, only its template
        head = classifier_head(model)
        prototypes.check_template(_received_arrays(msg), head.out_features, head.in_features)
    else:
        load_trainable_state(model, _received_arrays(msg))
    data = encoded(
        admitted.records,
        load_tokenizer(plan.model),
        max_length=plan.max_length,
        folder=settings.state,
    )
    randomness = round_randomness(settings.noise_seed, server_round=plan.server_round)
    dataset_account = store.launcher_account(admitted.account, launcher=launcher)

    try:  # the one place the budget is charged: from here on the round counts as spent
        charge_id, spend, draft = _charge(
            context,
            settings,
            plan,
            admitted,
            store,
            signer,
            randomness.source,
            job_account=job_account,
            dataset_account=dataset_account,
        )
    except Refused as exc:
        _refuse(exc, store=store, ledger=ledger, where=where)
        raise
    job_charge = store.job_charge(charge_id)
    noise, sample_rate, steps = admitted.step
    ledger.append(  # what the coordinator is not told, kept here for the node's auditors
        EntryKind.CHARGE,
        **where,
        detail={
            "charge": charge_id,
            "job_sha256": job_account,
            "job_charge": job_charge,
            "dataset": admitted.account,
            "dataset_account": dataset_account,
            "epsilon_dataset": spend.lifetime,
            "budget_epsilon": admitted.lifetime_budget,
            "noise_multiplier": noise,
            "sample_rate": sample_rate,
            "steps": steps,
            "delta": plan.delta,
            "accountant": plan.accountant.value,
            "noise_source": randomness.source.value,
            "privacy_unit": settings.privacy_unit.value,
            "records_per_person": settings.records_per_person,
        },
    )
    if release:
        mechanism = MechanismLog()
        arrays = release_prototypes(
            model,
            data,
            classes=len(plan.labels),
            noise_multiplier=noise,
            compute=pick_compute(),
            randomness=randomness,
            log=mechanism,
            people=admitted.people,
        )
    else:
        outcome = train_dp_round(
            model,
            data,
            schedule=LocalSchedule(
                epochs=plan.local_epochs,
                batch_size=plan.batch_size,
                learning_rate=plan.learning_rate,
                optimizer=plan.optimizer,
            ).scaled(
                plan.step_rule,
                expected_batch=admitted.public_size * sample_rate,
                noise=noise,
                max_grad_norm=plan.max_grad_norm,
                records_per_unit=settings.records_per_unit,
            ),
            dp=DpSgdSettings(
                noise_multiplier=noise,
                max_grad_norm=plan.max_grad_norm,
                accountant=plan.accountant,
                grad_sample_mode=(
                    dp_mode_for(plan.round_update)
                    if admitted.people is None
                    else GradSampleMode.HOOKS  # a person's rows are summed before clipping
                ),
            ),
            history=spend.before,
            compute=pick_compute(),
            randomness=randomness,
            public_records=admitted.public_size,
            people=admitted.people,
        )
        if outcome.history != spend.history:
            raise ConfigError(f"{settings.country}: trainer ran other steps than charged {steps}")
        mechanism = outcome.mechanism
        arrays = on_the_wire(trainable_state(model), plan.transfer_dtype)
    try:  # before anything leaves: a failed check sends nothing, and the charge stands
        checks = checked(
            mechanism, steps=steps, noise_multiplier=noise, max_grad_norm=draft.max_grad_norm
        )
    except ConfigError as exc:
        raise ConfigError(f"{settings.country} round {plan.server_round}: {exc}") from exc
    store.trained(charge_id)
    log.info(
        "%s trained round %d of job %s: charged eps %.3f (job %.3f of %g), dataset %.3f of %g",
        settings.country,
        plan.server_round,
        plan.job,
        spend.total - spend.spent,
        spend.total,
        plan.target_epsilon,
        spend.lifetime,
        admitted.lifetime_budget,
    )
    update = ArrayRecord({name: Array(value) for name, value in arrays.items()})
    reply, signed, sent = training_reply(
        msg, draft=draft, update=update, job_charge=job_charge, signer=signer, mechanism=checks
    )
    ledger.append(EntryKind.RECORD, **where, record=signed, received_sha256=sent.update_sha256)
    return reply


def _train_keeping_model(msg: Message, context: Context) -> Message:
    try:
        return _train(msg, context)
    except BaseException:
        forget()  # a failed round may leave the kept model half-loaded or half-trained
        raise


def _received_arrays(msg: Message) -> dict[str, np.ndarray]:
    record = msg.content.array_records[wire.ARRAYS]
    return {name: array.numpy() for name, array in record.items()}


def _answer(
    handler: Callable[[Message, Context], Message], msg: Message, context: Context
) -> Message:
    """Run ``handler``; refusals become coded replies, local faults one fixed sentence."""
    try:
        return handler(msg, context)
    except (BudgetExceeded, PolicyViolation) as exc:
        log.warning("%s", exc)  # the full sentence stays in the node's log
        return Message(Error(wire.REFUSED, exc.refusal.encode()), reply_to=msg)
    except (ConfigError, DataError) as exc:
        log.error("%s", exc)
        return Message(Error(wire.NODE_FAULT, wire.NODE_FAULT_REASON), reply_to=msg)


@app.train(mods=[egress_guard])
def train(msg: Message, context: Context) -> Message:
    """Train one round."""
    return _answer(_train_keeping_model, msg, context)


@app.query(mods=[egress_guard])
def query(msg: Message, context: Context) -> Message:
    """Confirm a job before its first round: the whole of it fits, and its budget is held."""
    return _answer(_confirm, msg, context)
