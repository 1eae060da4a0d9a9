"""What the coordinator asks of a node for one round, validated again on the node.

The node never trusts the coordinator's message: the same strict model checks it on arrival,
with the job file's bounds (finite numbers, the same limits), before anything is charged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, ValidationError, model_validator

from residency.common.config.job import (
    MAX_GRAD_NORM,
    MAX_TARGET_EPSILON,
    AccountantKind,
    Job,
    Strict,
    TransferDtype,
    UpdateKind,
)
from residency.common.errors import ConfigError


class RoundPlan(Strict):
    """One round's instructions, in the coordinator's ConfigRecord spelling (dashes)."""

    server_round: Annotated[int, Field(ge=1, alias="server-round")]
    job: Annotated[str, Field(min_length=1, max_length=64)]
    rounds: Annotated[int, Field(ge=1, le=10_000)]
    local_epochs: Annotated[int, Field(ge=1, le=1000, alias="local-epochs")]
    batch_size: Annotated[int, Field(ge=1, le=65_536, alias="batch-size")]
    learning_rate: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False, alias="learning-rate")]
    update: UpdateKind
    transfer_dtype: Annotated[TransferDtype, Field(alias="transfer-dtype")]
    lora_rank: Annotated[int, Field(ge=1, le=256, alias="lora-rank")]
    lora_alpha: Annotated[int, Field(ge=1, alias="lora-alpha")]
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
    base_fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", alias="base-fingerprint")]
    countries: Annotated[list[Annotated[str, Field(pattern=r"^[A-Z]{2}$")]], Field(min_length=1)]

    @model_validator(mode="after")
    def _deltas_survive_the_wire(self) -> RoundPlan:
        from residency.common.updates import method_for  # the registry imports torch

        if (
            self.transfer_dtype is TransferDtype.FLOAT16
            and not method_for(self.update).float16_wire
        ):
            raise ValueError(f"float16 transfer of a {self.update.value} update rounds the weights")
        if method_for(self.update).release_sensitivity is not None and self.rounds != 1:
            raise ValueError(
                f"a {self.update.value} update is one release, not {self.rounds} rounds"
            )
        return self

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


def round_config(job: Job, *, base_fingerprint: str) -> dict[str, Any]:
    """The ConfigRecord content the coordinator sends with every training message."""
    return {
        "job": job.name,
        "rounds": job.train.rounds,
        "local-epochs": job.train.local_epochs,
        "batch-size": job.train.batch_size,
        "learning-rate": job.train.learning_rate,
        "update": job.train.update.value,
        "transfer-dtype": job.train.transfer_dtype.value,
        "lora-rank": job.train.lora_rank,
        "lora-alpha": job.train.lora_alpha,
        "lora-targets": list(job.train.lora_targets),
        "seed": job.train.seed,
        "model": job.model.path,
        "max-length": job.model.max_length,
        "labels": list(job.data.labels),
        "text-column": job.data.text_column,
        "label-column": job.data.label_column,
        "target-epsilon": job.privacy.target_epsilon,
        "delta": job.privacy.delta,
        "max-grad-norm": job.privacy.max_grad_norm,
        "accountant": job.privacy.accountant.value,
        "base-fingerprint": base_fingerprint,
        "countries": [node.country for node in job.nodes],
    }
