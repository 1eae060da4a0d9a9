"""What a trained round sends back: the update, the public figures and the signed record.

The record is drafted before the charge (:func:`draft_record`, called inside the charging
transaction) with every figure it will carry, signed and re-opened as the coordinator will
open it; after training only the update's hash, the charge's number and the mechanism's own
checks (:mod:`.mechanism_check`) are filled in. What would tell one coordinator about another's
use of the data stays out: the record names the dataset by this launcher's pseudonym, numbers
the charge within its job, and leaves the dataset's lifetime spend to the node's own ledger.
Its time (``signed_at``) is the draft's, taken before training: a time taken after it would
tell the coordinator how long this round's data took to train.
So a round whose record could not be signed is refused, never charged and then wasted.
The reply holds only what ``docs/privacy.md`` lists as public; the egress guard enforces it.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from residency.client.admission import Admission, Spend
from residency.client.node_config import NodeSettings
from residency.common import wire
from residency.common.clock import now
from residency.common.config.round_plan import RoundPlan
from residency.common.privacy.record import (
    MechanismChecks,
    NoiseSource,
    PrivacyRecord,
    SignedRecord,
    open_record,
    sign_record,
)
from residency.common.privacy.signing import Signer
from residency.common.privacy.unit import PrivacyUnit
from residency.common.privacy.update_digest import update_sha256
from residency.common.updates.traits import traits_for
from residency.common.version import __version__

_UNSENT = "0" * 64  # the draft's update hash: the update does not exist yet


def draft_record(
    *,
    settings: NodeSettings,
    plan: RoundPlan,
    admission: Admission,
    spend: Spend,
    run: str,
    node_id: int,
    noise_source: NoiseSource,
    signer: Signer,
    dataset_account: str,
) -> PrivacyRecord:
    """The record this round will sign, checked as the coordinator will check it.

    ``dataset_account`` is the dataset's name for this job's launcher
    (:meth:`~residency.client.budget_store.BudgetStore.launcher_account`).

    Raises ``ValueError`` (pydantic's ``ValidationError`` or ``InvalidUpdate``) when any
    figure would not validate: an infinite clipping norm, a history too long to sign...
    """
    noise, sample_rate, steps = admission.step
    policy = admission.policy
    signed = plan.signed  # checked at admission (client/job_trust.py)
    record = PrivacyRecord(
        job=plan.job,
        run=run,
        round=plan.server_round,
        node=node_id,
        country=settings.country,
        dataset=dataset_account,
        examples=admission.public_size,  # the declared public size, never the count
        noise_multiplier=noise,
        sample_rate=sample_rate,
        steps=steps,
        max_grad_norm=traits_for(plan.round_update).clip_norm(plan.max_grad_norm),
        noise_source=noise_source,
        accountant=plan.accountant,
        delta=plan.delta,
        history=list(spend.history),
        epsilon_round=spend.total - spend.spent,
        epsilon=spend.total,
        target_epsilon=plan.target_epsilon,
        budget_epsilon=admission.lifetime_budget,
        policy=None if policy is None else policy.digest(),
        policy_name=None if policy is None else policy.name,
        version=__version__,
        update_sha256=_UNSENT,
        charge=1,
        signed_at=now(),
        key=signer.public_hex,
        launcher=None if signed is None else signed.launcher,
        job_sha256=None if signed is None else signed.sha256,
        privacy_unit=settings.privacy_unit,
        records_per_person=(
            settings.records_per_person if settings.privacy_unit is PrivacyUnit.PERSON else None
        ),
    )
    open_record(sign_record(record, signer))
    return record


def reply_metrics(record: PrivacyRecord) -> MetricRecord:
    """The reply's metrics: the public figures of the signed record, nothing else."""
    return MetricRecord(
        {
            wire.NUM_EXAMPLES: record.examples,
            wire.STEPS: record.steps,
            wire.EPSILON: record.epsilon,
            wire.EPSILON_ROUND: record.epsilon_round,
            wire.DELTA: record.delta,
            wire.NOISE_MULTIPLIER: record.noise_multiplier,
            wire.SAMPLE_RATE: record.sample_rate,
            wire.MAX_GRAD_NORM: record.max_grad_norm,
        }
    )


def training_reply(
    instruction: Message,
    *,
    draft: PrivacyRecord,
    update: ArrayRecord,
    job_charge: int,
    signer: Signer,
    mechanism: MechanismChecks,
) -> tuple[Message, SignedRecord, PrivacyRecord]:
    """The reply to ``instruction`` (update, public figures, signed record) and that record.

    ``job_charge`` is the round's charge numbered within its signed job on this node
    (:meth:`~residency.client.budget_store.BudgetStore.job_charge`); ``mechanism`` is what the
    node checked of its DP mechanism as it ran, signed with the rest.
    """
    arrays = {name: array.numpy() for name, array in update.items()}
    completed = draft.model_copy(
        update={
            "update_sha256": update_sha256(arrays),
            "charge": job_charge,
            "mechanism": mechanism,
        }
    )
    signed = sign_record(completed, signer)
    record = open_record(signed)  # the completed record validates as the draft did
    metrics = reply_metrics(record)
    node = ConfigRecord(
        {
            wire.COUNTRY: record.country,
            wire.ACCOUNTANT: record.accountant.value,
            wire.DATASET_ACCOUNT: record.dataset,
            wire.VERSION: record.version,
        }
    )
    content = RecordDict(
        {
            wire.ARRAYS: update,
            wire.METRICS: metrics,
            wire.NODE: node,
            wire.RECORD: ConfigRecord(
                {wire.RECORD_BODY: signed.body, wire.RECORD_SIGNATURE: signed.signature}
            ),
        }
    )
    return Message(content, reply_to=instruction), signed, record
