"""What the coordinator asks of a node for one round, validated again on the node.

The node never trusts the coordinator's message: the same strict model checks it on arrival,
with the job file's bounds (finite numbers, the same limits), before anything is charged.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from residency.common.config.job import (
    MAX_GRAD_NORM,
    MAX_LORA_ALPHA,
    MAX_TARGET_EPSILON,
    Job,
    Strict,
    pipeline_problem,
    refinable,
    round_update,
)
from residency.common.config.kinds import (
    AccountantKind,
    Optimizer,
    StepRule,
    TransferDtype,
    UpdateKind,
)
from residency.common.config.signed_job import MAX_JOB_BYTES, SignedJob
from residency.common.errors import ConfigError

NO_WARM_START = "none"

FEATURE_SCALE_FLOOR = 2.0**-13
"""Smallest per-dimension scale a node accepts in a feature transform (about 1.2e-4).

The head reads ``(x - centre) / scale`` of unit-norm features, so a scale near zero (a
subnormal, say) lets the coordinator blow one dimension up until one record's logits
overflow. The public scale the coordinator sends (:mod:`residency.common.feature_scale`) is
floored at a tenth of its median, about ``0.1 / sqrt(width)``: above 1e-3 for any width a
plan can carry (8192). A power of two, so float32 holds it exactly."""

FEATURE_CENTRE_BOUND = 1.0
"""Largest ``|centre|`` per dimension: the centre is a mean of unit vectors, within [-1, 1].

With the floor, a standardised feature is at most ``2 / FEATURE_SCALE_FLOOR`` (16384) in
size, so the head's logits and gradients stay finite for any weights within
:data:`residency.common.model.WEIGHT_BOUND`."""


class RoundPlan(Strict):
    """One round's instructions, in the coordinator's ConfigRecord spelling (dashes)."""

    server_round: Annotated[int, Field(ge=1, alias="server-round")]
    job: Annotated[str, Field(min_length=1, max_length=64)]
    rounds: Annotated[int, Field(ge=1, le=10_000)]
    local_epochs: Annotated[int, Field(ge=1, le=1000, alias="local-epochs")]
    batch_size: Annotated[int, Field(ge=1, le=65_536, alias="batch-size")]
    learning_rate: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False, alias="learning-rate")]
    update: UpdateKind
    warm_start: Annotated[UpdateKind | None, Field(alias="warm-start")]
    optimizer: Optimizer
    step_rule: Annotated[StepRule, Field(alias="step-rule")]
    transfer_dtype: Annotated[TransferDtype, Field(alias="transfer-dtype")]
    lora_rank: Annotated[int, Field(ge=1, le=256, alias="lora-rank")]
    lora_alpha: Annotated[int, Field(ge=1, le=MAX_LORA_ALPHA, alias="lora-alpha")]
    lora_targets: Annotated[list[str], Field(min_length=1, alias="lora-targets")]
    seed: int
    model: Annotated[str, Field(min_length=1)]
    max_length: Annotated[int, Field(ge=8, le=512, alias="max-length")]
    labels: Annotated[list[str], Field(min_length=2)]
    text_column: Annotated[str, Field(min_length=1, alias="text-column")]
    label_column: Annotated[str, Field(min_length=1, alias="label-column")]
    target_epsilon: Annotated[
        float, Field(gt=0, le=MAX_TARGET_EPSILON, allow_inf_nan=False, alias="target-epsilon")
    ]
    delta: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
    max_grad_norm: Annotated[
        float, Field(gt=0, le=MAX_GRAD_NORM, allow_inf_nan=False, alias="max-grad-norm")
    ]
    accountant: AccountantKind
    warm_start_share: Annotated[
        float, Field(gt=0, lt=1, allow_inf_nan=False, alias="warm-start-share")
    ]
    feature_transform: Annotated[
        bytes, Field(max_length=2 * 4 * 8192, alias="feature-transform")
    ] = b""  # absent before a warm start's release: Flower cannot size an empty value
    base_fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", alias="base-fingerprint")]
    countries: Annotated[list[Annotated[str, Field(pattern=r"^[A-Z]{2}$")]], Field(min_length=1)]
    # the job as its launcher signed it; a node refuses a plan without it (client/job_trust.py)
    signed_job: Annotated[str, Field(max_length=MAX_JOB_BYTES, alias="signed-job")] = ""
    job_launcher: Annotated[str, Field(max_length=64, alias="job-launcher")] = ""
    job_signature: Annotated[str, Field(max_length=128, alias="job-signature")] = ""
    # the warm start's release again, spending what the job has left (server/held_out.py)
    refine: Annotated[bool, Field(strict=True)] = False
    # a confirmation query's last word: the job is over, the node frees what it holds for it
    job_ended: Annotated[bool, Field(strict=True, alias="job-ended")] = False

    @field_validator("warm_start", mode="before")
    @classmethod
    def _no_warm_start(cls, value: Any) -> Any:
        return None if value == NO_WARM_START else value  # a ConfigRecord holds no None

    @property
    def signed(self) -> SignedJob | None:
        """The signed job the plan carries (``ValidationError`` if malformed), if any."""
        if not (self.signed_job or self.job_launcher or self.job_signature):
            return None
        return SignedJob(
            body=self.signed_job, launcher=self.job_launcher, signature=self.job_signature
        )

    @property
    def round_update(self) -> UpdateKind:
        """What this round runs: the update, or the warm start's release (round 1, a refine)."""
        return round_update(self.update, self.warm_start, self.server_round, refine=self.refine)

    @property
    def centre_and_scale(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The head's public feature standardisation, when the job has a warm start."""
        if not self.feature_transform:
            return None
        values = np.frombuffer(self.feature_transform, dtype="<f4").reshape(2, -1)
        return values[0].copy(), values[1].copy()

    @model_validator(mode="after")
    def _deltas_survive_the_wire(self) -> RoundPlan:

        transform = self.feature_transform
        wanted = self.warm_start is not None and self.server_round > 1
        if bool(transform) != wanted:
            raise ValueError(
                "feature transform "
                + ("missing after the warm start" if wanted else "sent without a warm start")
            )
        if transform:
            values = np.frombuffer(transform, dtype="<f4") if len(transform) % 8 == 0 else None
            if values is None or not np.isfinite(values).all():
                raise ValueError("feature transform is not finite float32 pairs")
            centre, scale = values.reshape(2, -1)
            if not (scale > 0).all():
                raise ValueError("feature scale must be positive")
            if not (scale >= FEATURE_SCALE_FLOOR).all():
                raise ValueError(f"feature scale below the floor {FEATURE_SCALE_FLOOR:.3g}")
            if not (np.abs(centre) <= FEATURE_CENTRE_BOUND).all():
                raise ValueError(
                    f"feature centre outside [-{FEATURE_CENTRE_BOUND:g}, {FEATURE_CENTRE_BOUND:g}]"
                )

        problem = pipeline_problem(
            self.update, self.warm_start, rounds=self.rounds, transfer_dtype=self.transfer_dtype
        )
        if problem is not None:
            raise ValueError(problem)
        if self.refine and (self.server_round == 1 or not refinable(self.update, self.warm_start)):
            raise ValueError("only the release before a head is refined, after round 1")
        return self

    @classmethod
    def for_job(
        cls,
        job: Job,
        *,
        server_round: int,
        base_fingerprint: str,
        feature_transform: bytes = b"",
        signed: SignedJob | None = None,
        refine: bool = False,
    ) -> RoundPlan:
        """The plan of ``job`` for ``server_round``: the one place a job field maps to the wire.

        Raises:
            ValidationError: the plan breaks a rule the node would refuse it for.
        """
        train, privacy = job.train, job.privacy
        fields: dict[str, Any] = {
            "server_round": server_round,
            "job": job.name,
            "rounds": train.rounds,
            "local_epochs": train.local_epochs,
            "batch_size": train.batch_size,
            "learning_rate": train.learning_rate,
            "update": train.update,
            "warm_start": train.warm_start,
            "optimizer": train.optimizer,
            "step_rule": train.step_rule,
            "transfer_dtype": train.transfer_dtype,
            "lora_rank": train.lora_rank,
            "lora_alpha": train.lora_alpha,
            "lora_targets": list(train.lora_targets),
            "seed": train.seed,
            "model": job.model.path,
            "max_length": job.model.max_length,
            "labels": list(job.data.labels),
            "text_column": job.data.text_column,
            "label_column": job.data.label_column,
            "target_epsilon": privacy.target_epsilon,
            "delta": privacy.delta,
            "max_grad_norm": privacy.max_grad_norm,
            "accountant": privacy.accountant,
            "warm_start_share": privacy.warm_start_share,
            "feature_transform": feature_transform,
            "base_fingerprint": base_fingerprint,
            "countries": [node.country for node in job.nodes],
            "signed_job": "" if signed is None else signed.body,
            "job_launcher": "" if signed is None else signed.launcher,
            "job_signature": "" if signed is None else signed.signature,
            "refine": refine,
        }
        return cls.model_validate(fields, by_name=True)

    def record(self) -> dict[str, Any]:
        """The ConfigRecord content: wire names, plain values, without the per-message fields.

        Flower cannot size an empty value, so an absent transform, signature or refine is left
        out (each field's default), and no warm start is spelled ``NO_WARM_START``.
        """
        values = self.model_dump(
            by_alias=True, exclude={"server_round", "job_ended"}, exclude_defaults=True
        )
        values["warm-start"] = NO_WARM_START if self.warm_start is None else self.warm_start
        return {key: _plain(value) for key, value in values.items()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RoundPlan:
        """Validate a received ConfigRecord; unknown or missing keys are refused."""
        try:
            return cls.model_validate(dict(record))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise ConfigError(
                f"round config from coordinator: {field}: {err['msg']}; "
                "fix: coordinator and node must run the same Residency version"
            ) from exc


def _plain(value: Any) -> Any:
    """An enum as its value: a ConfigRecord holds plain strings."""
    return value.value if isinstance(value, StrEnum) else value


def feature_transform_bytes(centre: np.ndarray, scale: np.ndarray) -> bytes:
    """The ``feature-transform`` value: centre then scale, little-endian float32."""
    return np.stack([centre, scale]).astype("<f4").tobytes()


def round_config(
    job: Job,
    *,
    base_fingerprint: str,
    feature_transform: bytes = b"",
    signed: SignedJob | None = None,
    refine: bool = False,
    first_round: int | None = None,
) -> dict[str, Any]:
    """The ConfigRecord content the coordinator sends with every training message.

    Built from :class:`RoundPlan` itself (:meth:`RoundPlan.for_job`), so the wire carries
    exactly the fields a node validates, under their wire names, and the coordinator checks
    its own plan with the node's rules before sending it. Flower's ``server-round`` is the
    strategy's, per message; ``first_round`` is the round the record goes out with first
    (default: round 1, or round 2 once a warm start's transform is set).
    """
    if first_round is None:
        first_round = 2 if feature_transform else 1
    plan = RoundPlan.for_job(
        job,
        server_round=first_round,
        base_fingerprint=base_fingerprint,
        feature_transform=feature_transform,
        signed=signed,
        refine=refine,
    )
    return plan.record()
