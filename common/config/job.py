"""The federated job a coordinator launches: model, data schema, training and privacy settings.

A job file is TOML; relative paths resolve against the job file's folder. Everything is
frozen and strict (unknown keys are errors) because a silently ignored privacy setting is a
privacy bug.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from residency.common.config.loading import load_model

BUILTIN_MODELS = ("minilm", "tiny")
SENTENCE_POOLING_FILE = Path("1_Pooling") / "config.json"
"""Where a sentence-transformers checkpoint says how it pools (the classifier head follows it)."""


class Strict(BaseModel):
    """Base for every config model: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class UpdateKind(StrEnum):
    """What a node trains and sends: LoRA adapters plus head, the head alone, or every weight.

    ``prototypes`` trains nothing: each node releases, once, noisy per-class sums and counts of
    its frozen encoder's normalised features, and the coordinator sets the classifier head from
    the noisy class means (one Gaussian release at sample rate 1: the cheapest use of a budget).

        ``lora-fa`` freezes LoRA's A matrices at their seeded random start (LoRA-FA), so only B and
        the head are trained and sent: half the adapter bytes. ``head`` trains only the classifier
        head on the frozen encoder's features (a linear probe): under DP-SGD its few values carry
        far less noise, which on small per-country data beats adapting the encoder
        (docs/performance.md).
    """

    LORA = "lora"
    LORA_FA = "lora-fa"
    HEAD = "head"
    FULL = "full"
    PROTOTYPES = "prototypes"


class TransferDtype(StrEnum):
    """Precision of the arrays on the wire (both ways); training and averaging stay float32."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"


class AccountantKind(StrEnum):
    """Opacus accountant used for the node's epsilon (PRV is tighter, RDP the classic bound)."""

    PRV = "prv"
    RDP = "rdp"


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


class ModelSection(Strict):
    """Which pretrained encoder to fine-tune and how long its inputs may be."""

    path: str = Field(
        default="minilm",
        description='"minilm" (shipped MiniLM-L6), "tiny" (random test BERT) or a local '
        "Hugging Face checkpoint directory",
    )
    max_length: Annotated[int, Field(strict=True, ge=8, le=512)] = 128

    @field_validator("path")
    @classmethod
    def _checkpoint_exists(cls, value: str, info: ValidationInfo) -> str:
        if value in BUILTIN_MODELS:
            return value
        folder = _resolve(Path(value), info)
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"{folder} is not a Hugging Face checkpoint directory (no config.json); use "
                '"minilm", "tiny" or a local checkpoint folder'
            )
        pooling = folder / SENTENCE_POOLING_FILE
        if pooling.is_file():
            try:
                json.loads(pooling.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"{pooling} is unreadable ({exc}); repair it or remove the 1_Pooling folder"
                ) from exc
        return str(folder.resolve())


class DataSection(Strict):
    """The schema every country's data file follows, and the optional global test file."""

    text_column: Annotated[str, Field(min_length=1)] = "text"
    label_column: Annotated[str, Field(min_length=1)] = "label"
    labels: Annotated[list[str], Field(min_length=2, max_length=1000)]
    test: Path | None = None

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, value: list[str]) -> list[str]:
        if any(not label.strip() for label in value):
            raise ValueError("labels must be non-empty strings")
        dupes = sorted({label for label in value if value.count(label) > 1})
        if dupes:
            raise ValueError(f"labels must be unique, repeated: {', '.join(dupes)}")
        return value

    @field_validator("test")
    @classmethod
    def _test_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)


DEFAULT_UPDATE = UpdateKind.PROTOTYPES
"""What a job trains when it does not say: the one-shot class-mean release, the most accurate
kind measured at a few hundred notes per country, and never worse than DP-LoRA at any size
measured (docs/performance.md, ``bench/accuracy.py``)."""
TRAINING_ROUNDS = 3
"""Rounds of a DP-SGD job that does not say (a release has one)."""


class TrainSection(Strict):
    """Federated schedule and local optimisation settings."""

    rounds: Annotated[int, Field(strict=True, ge=1, le=10_000)] = TRAINING_ROUNDS
    local_epochs: Annotated[int, Field(strict=True, ge=1, le=1000)] = 1
    batch_size: Annotated[int, Field(strict=True, ge=1, le=65_536)] = 32
    learning_rate: Annotated[float, Field(strict=True, gt=0, le=10, allow_inf_nan=False)] = 5e-4
    update: UpdateKind = DEFAULT_UPDATE
    transfer_dtype: TransferDtype = TransferDtype.FLOAT32
    lora_rank: Annotated[int, Field(strict=True, ge=1, le=256)] = 8
    lora_alpha: Annotated[int, Field(strict=True, ge=1)] = 16
    lora_targets: Annotated[list[str], Field(min_length=1)] = ["query", "value"]
    seed: Annotated[int, Field(strict=True)] = 0
    round_timeout_s: Annotated[float, Field(strict=True, gt=0)] = 3600.0
    nodes_timeout_s: Annotated[float, Field(strict=True, gt=0)] = 600.0

    @model_validator(mode="before")
    @classmethod
    def _rounds_follow_the_update(cls, data: Any) -> Any:
        """An unset ``rounds`` is 1 for a one-shot release, :data:`TRAINING_ROUNDS` otherwise."""
        if not isinstance(data, dict) or "rounds" in data:
            return data
        from residency.common.updates import method_for  # the registry imports torch

        try:
            update = UpdateKind(data.get("update", DEFAULT_UPDATE))
        except ValueError:
            return data  # the field's own error names the bad value
        release = method_for(update).release_sensitivity is not None
        return {**data, "rounds": 1 if release else TRAINING_ROUNDS}

    @model_validator(mode="after")
    def _deltas_survive_the_wire(self) -> TrainSection:
        from residency.common.updates import method_for  # the registry imports torch

        if (
            self.transfer_dtype is TransferDtype.FLOAT16
            and not method_for(self.update).float16_wire
        ):
            raise ValueError(
                f'transfer_dtype "float16" with update "{self.update.value}" rounds the weights, '
                "not the changes: most of a round's update is lost; fix: transfer_dtype = "
                '"float32", or a LoRA or head update'
            )
        if method_for(self.update).release_sensitivity is not None and self.rounds != 1:
            raise ValueError(
                f'update "{self.update.value}" is one release, not rounds of training; '
                "fix: rounds = 1"
            )
        return self


MAX_TARGET_EPSILON = 100.0
MAX_GRAD_NORM = 1e4
"""Clipping norms above this are a typo or an attack (an infinite norm is no clipping)."""


class PrivacySection(Strict):
    """Record-level DP for each country over the whole job."""

    # Above 100 an epsilon promises nothing, and Opacus' PRV noise search for it takes minutes
    # (20 s at 300, over 5 min at 1000 on 2 cores) while the node holds the round.
    target_epsilon: Annotated[float, Field(strict=True, gt=0, le=MAX_TARGET_EPSILON)]
    delta: Annotated[float, Field(strict=True, gt=0, lt=1)] = 1e-5
    max_grad_norm: Annotated[
        float, Field(strict=True, gt=0, le=MAX_GRAD_NORM, allow_inf_nan=False)
    ] = 1.0
    accountant: AccountantKind = AccountantKind.PRV


class NodeEntry(Strict):
    """One country in the job; ``data`` is its file in simulation (a deployed node owns its own)."""

    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 code")]
    data: Path | None = None

    @field_validator("data")
    @classmethod
    def _data_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)


class Job(Strict):
    """A whole federated fine-tuning job."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "job"
    model: Annotated[ModelSection, Field(default_factory=ModelSection)]
    data: DataSection
    train: Annotated[TrainSection, Field(default_factory=TrainSection)]
    privacy: PrivacySection
    nodes: Annotated[list[NodeEntry], Field(default_factory=list, max_length=256)]

    @field_validator("nodes")
    @classmethod
    def _unique_countries(cls, nodes: list[NodeEntry]) -> list[NodeEntry]:
        countries = [node.country for node in nodes]
        dupes = sorted({c for c in countries if countries.count(c) > 1})
        if dupes:
            raise ValueError(f"each country may appear once in [[nodes]], repeated: {dupes}")
        return nodes

    def require_nodes(self, path: Path, *, with_data: bool = True) -> None:
        """Every job names its countries; simulation also needs each country's data file."""
        from residency.common.errors import ConfigError

        example = 'country = "DE" data = "de.csv"' if with_data else 'country = "DE"'
        if not self.nodes:
            raise ConfigError(
                f"{path}: nodes: no [[nodes]] tables; fix: add one per country, "
                f"e.g. [[nodes]] {example}"
            )
        missing = [node.country for node in self.nodes if node.data is None]
        if with_data and missing:
            raise ConfigError(
                f"{path}: nodes: no data file for {', '.join(missing)}; fix: simulation reads "
                'each country\'s file, add e.g. data = "de.csv" to its [[nodes]] table'
            )


def load_job(path: Path) -> Job:
    """Load and validate a job file; relative paths resolve against its folder."""
    path = Path(path)
    return load_model(path, Job, context={"base_dir": path.resolve().parent})
