"""The signed privacy record a node attaches to every training reply.

It states, in the node's own words and under its Ed25519 key, what one round cost: the
mechanism (noise, sample rate, steps, clipping), the run's composed history on the dataset, the
epsilon this round and in total, the dataset's budget, the policy in force and the hash of the
update sent. Since schema 5 it no longer states the dataset's lifetime spend (what every other
coordinator spent on the data): the node keeps that in its own ledger, for auditors. An auditor
recomputes every epsilon in it with two independent accountants; nothing in it is taken on
trust.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from residency.common.config.kinds import AccountantKind
from residency.common.errors import InvalidUpdate
from residency.common.privacy.accountant import History
from residency.common.privacy.canonical import canonical_json
from residency.common.privacy.signing import Signer, verify
from residency.common.privacy.unit import PrivacyUnit

RECORD_SCHEMA = 6
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Epsilon = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Step = tuple[  # a DP step always adds noise and runs: no record may claim zero of either
    Annotated[float, Field(gt=0, allow_inf_nan=False)],
    Annotated[float, Field(gt=0, le=1)],
    Annotated[int, Field(ge=1)],
]


class NoiseSource(StrEnum):
    """Where the round's Poisson masks and Gaussian noise came from.

    ``os-entropy``: a generator seeded per round from the node's OS entropy, never from a
    message (the DP guarantee holds against whoever wrote the job). ``operator-seed``: a
    seed in the operator's ``node.toml``, for tests and benchmarks only; anyone who learns it
    can subtract the noise, so ``residency audit verify`` flags such a record as not DP.
    """

    OS_ENTROPY = "os-entropy"
    OPERATOR_SEED = "operator-seed"


class MechanismChecks(BaseModel):
    """What the node checked of its own mechanism before the round's update left (schema 4).

    Libraries can break DP silently (Opacus' hooks stopped registering on PEFT's LoRA layers
    in some releases, opacus issue 820): a tensor that gets no per-example gradient is
    trained without clipping. So the node counts, as it trains: ``steps``, the noisy steps
    taken; ``batches``, the Poisson batches, empty ones included (so the count is the steps',
    never how many batches the sampler left empty); ``clipped_batches``, the batches in which
    every trainable tensor had a per-example gradient (ghost clipping: a per-example norm) for
    every row and the clipped sum stayed within rows x ``max_grad_norm``; ``noise_std``, the
    standard deviation every step's noise was drawn with. A release is one step and one batch
    whose rows were all scaled to norm at most 1. The node signs them only when ``steps`` is
    the record's, every batch was clipped and ``noise_std`` is ``noise_multiplier x
    max_grad_norm``; otherwise it sends nothing (``client/mechanism_check.py``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    steps: Annotated[int, Field(ge=0)]
    batches: Annotated[int, Field(ge=0)]
    clipped_batches: Annotated[int, Field(ge=0)]
    noise_std: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class PrivacyRecord(BaseModel):
    """One node's account of one round; immutable, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # 3 added launcher and job_sha256, 4 mechanism; 5 dropped epsilon_dataset and made
    # dataset and charge per launcher and per job (client/budget_store.py); 6 privacy_unit
    # and records_per_person
    schema_version: Literal[2, 3, 4, 5, 6] = 6
    job: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    run: Annotated[str, Field(pattern=r"^[0-9]{1,20}$")]
    round: Annotated[int, Field(ge=1)]
    node: Annotated[int, Field(ge=0)]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    dataset: Hex64  # the dataset's account, keyed by a node secret (and the launcher, schema 5)
    examples: Annotated[int, Field(ge=1)]  # the declared public size in the unit, never a count
    noise_multiplier: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    sample_rate: Annotated[float, Field(gt=0, le=1)]
    steps: Annotated[int, Field(ge=1)]
    max_grad_norm: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    noise_source: NoiseSource
    accountant: AccountantKind
    delta: Annotated[float, Field(gt=0, lt=1)]
    history: Annotated[list[Step], Field(min_length=1, max_length=64)]
    epsilon_round: Epsilon
    epsilon: Epsilon
    target_epsilon: Epsilon
    epsilon_dataset: Epsilon | None = None  # schemas 2 to 4 only: now in the node's ledger
    budget_epsilon: Epsilon
    policy: Hex64 | None
    policy_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] | None
    version: Annotated[str, Field(pattern=r"^[0-9A-Za-z.+_-]{1,40}$")]
    update_sha256: Hex64
    charge: Annotated[int, Field(ge=1)]  # schema 5: the job's n-th charge on the node
    signed_at: Annotated[str, Field(pattern=r"^[0-9T:.+-]{19,40}Z?$")]
    key: Hex64
    launcher: Hex64 | None = None  # the key that signed the job this round ran (schema 3)
    job_sha256: Hex64 | None = None  # the hash of the signed job's bytes (schema 3)
    mechanism: MechanismChecks | None = None  # filled in after training (schema 4)
    privacy_unit: PrivacyUnit = PrivacyUnit.RECORD  # what epsilon is per (schema 6)
    records_per_person: Annotated[int, Field(ge=1)] | None = None  # the cap (schema 6, person)

    @model_validator(mode="after")
    def _dataset_epsilon_by_schema(self) -> PrivacyRecord:
        """Schemas 2 to 4 state the dataset's lifetime epsilon; schema 5 never does."""
        if (self.epsilon_dataset is None) != (self.schema_version >= 5):
            raise ValueError("epsilon_dataset: required up to schema 4, absent from schema 5 on")
        return self

    @model_validator(mode="after")
    def _cap_by_unit(self) -> PrivacyRecord:
        """A person-level record states its cap on records per person; a record-level one none."""
        if (self.records_per_person is None) != (self.privacy_unit is PrivacyUnit.RECORD):
            raise ValueError("records_per_person: required for privacy_unit person, else absent")
        return self

    @property
    def step(self) -> tuple[float, float, int]:
        """This round's mechanism in Opacus' history format."""
        return (self.noise_multiplier, self.sample_rate, self.steps)

    @property
    def run_history(self) -> History:
        """The run's composed history on the dataset, this round included."""
        return tuple((float(z), float(q), int(n)) for z, q, n in self.history)


class SignedRecord(BaseModel):
    """A record's canonical JSON and the Ed25519 signature over its bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    body: Annotated[str, Field(max_length=16_384)]
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]


SCHEMA_FIELDS = {
    3: frozenset({"launcher", "job_sha256"}),
    4: frozenset({"mechanism"}),
    6: frozenset({"privacy_unit", "records_per_person"}),
}
"""The keys each schema version added: an older record keeps its bytes without them."""
SCHEMA_DROPPED = {5: frozenset({"epsilon_dataset"})}
"""The keys each schema version removed: a newer record's bytes never carry them."""


def record_json(record: PrivacyRecord) -> str:
    """The record's canonical JSON, without the keys of schemas newer than its own."""
    newer = {
        key
        for version, keys in SCHEMA_FIELDS.items()
        if version > record.schema_version
        for key in keys
    } | {
        key
        for version, keys in SCHEMA_DROPPED.items()
        if version <= record.schema_version
        for key in keys
    }
    data = {key: value for key, value in record.model_dump(mode="json").items() if key not in newer}
    return canonical_json(data)


def sign_record(record: PrivacyRecord, signer: Signer) -> SignedRecord:
    """Serialise canonically and sign; the record must name ``signer``'s key."""
    if record.key != signer.public_hex:
        raise ValueError("record.key must be the signer's public key")
    body = record_json(record)
    return SignedRecord(body=body, signature=signer.sign(body.encode("ascii")))


def open_record(signed: SignedRecord) -> PrivacyRecord:
    """Parse a signed record and check it: strict schema, canonical bytes, valid signature.

    Raises ``InvalidUpdate`` with the reason; the signature is checked against the key the
    record names (whether that key belongs to the country is the auditor's check, against key
    files obtained from each node).
    """
    try:
        record = PrivacyRecord.model_validate_json(signed.body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        raise InvalidUpdate(f"privacy record: {where}: {err['msg']}") from exc
    if record_json(record) != signed.body:
        raise InvalidUpdate("privacy record: not in canonical form")
    if not verify(record.key, signed.body.encode("ascii"), signed.signature):
        raise InvalidUpdate("privacy record: signature does not verify")
    return record
