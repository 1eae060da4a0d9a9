"""The federated job a coordinator launches: model, data schema, training and privacy settings.

A job file is TOML; relative paths resolve against the job file's folder. Everything is
frozen and strict (unknown keys are errors) because a silently ignored privacy setting is a
privacy bug.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from residency.common.config.kinds import (
    AccountantKind,
    Aggregation,
    Optimizer,
    StepRule,
    TransferDtype,
    UpdateKind,
)
from residency.common.config.loading import load_model
from residency.common.country import CountryCode
from residency.common.privacy.unit import DEFAULT_RECORDS_PER_PERSON, PrivacyUnit
from residency.common.updates.traits import traits_for

BUILTIN_MODELS = ("minilm", "tiny")
SENTENCE_POOLING_FILE = Path("1_Pooling") / "config.json"
"""Where a sentence-transformers checkpoint says how it pools (the classifier head follows it)."""


class Strict(BaseModel):
    """Base for every config model: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


DEFAULT_TRIM_FRACTION = 0.2
"""Share of the updates ``trimmed-mean`` drops at each end, per coordinate (Flower's default)."""
MEDIAN_RESISTS_ONE = 3
"""Updates a median needs before one node cannot move it at will (the median of 2 is a mean)."""


def _remote(info: ValidationInfo) -> bool:
    """Paths name files on the coordinator host: kept as written, not looked for here."""
    return bool((info.context or {}).get("remote"))


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute() and not _remote(info):
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
        if value in BUILTIN_MODELS or _remote(info):
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


VALIDATION_SHARE = 0.5
"""Share of the coordinator's test set held out to choose, never reported.

The held-out part picks the round whose model is kept and, in a warm-started job, whether
the budget left after the first training round goes to training or to refining the release
(``server/held_out.py``); scores are reported on the rest, so the choice does not flatter
them. Measured with ``bench/pipeline_replay.py`` (docs/performance.md)."""


class DataSection(Strict):
    """The schema every country's data file follows, and the optional global test file."""

    text_column: Annotated[str, Field(min_length=1)] = "text"
    label_column: Annotated[str, Field(min_length=1)] = "label"
    labels: Annotated[list[str], Field(min_length=2, max_length=1000)]
    test: Path | None = None
    validation_share: Annotated[float, Field(ge=0.0, le=0.9, allow_inf_nan=False)] = (
        VALIDATION_SHARE
    )

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


DEFAULT_UPDATE = UpdateKind.HEAD
"""What a job trains when it names a warm start but no update (the one kind a release starts)."""
DEFAULT_PIPELINE: tuple[UpdateKind, UpdateKind | None] = (DEFAULT_UPDATE, UpdateKind.PROTOTYPES)
"""(update, warm_start) of a job that names neither: the class-mean release, then full-batch
DP-SGD on the head it set, over features standardised with the release's mean, each node's
step scaled to its records and noise. Measured (``bench/accuracy.py``, docs/performance.md)
at or above the release alone at 100, 500 and 2,000 notes per country, except where
nothing learns (100 notes at epsilon 1)."""
TRAINING_ROUNDS = 3
"""Rounds of a DP-SGD job that does not say (a release has one)."""
MAX_LORA_ALPHA = 4096
"""LoRA's ``alpha`` above this is a typo or an attack: its adapters' output scales by
``alpha / rank``, and the coordinator chooses it (twice the largest rank is 512)."""
WARM_STARTED_HEAD: dict[str, Any] = {
    "rounds": 5,
    "local_epochs": 10,
    "batch_size": 65_536,
    "learning_rate": 0.032,
    "optimizer": "sgd",
    "step_rule": "noise",
}
"""What a head warm-started by a release does unless the job says otherwise: full batches
(sample rate 1 up to 65,536 records), ten plain noisy gradient steps per round, five rounds,
each step scaled to the node's records and noise (:class:`StepRule`; ``bench/accuracy.py``,
docs/performance.md)."""
WARM_STARTED_LORA: dict[str, Any] = {
    "rounds": 3,
    "local_epochs": 1,
    "batch_size": 256,
    "learning_rate": 2e-3,
    "optimizer": "adamw",
    "step_rule": "fixed",
}
"""What LoRA started by a release does unless the job says otherwise: the encoder's adapters
and the release's head trained together by AdamW at 2e-3 on Poisson batches of 256, one epoch
a round, three rounds. Rates of 2e-3 and 5e-3 tied on tweets at 2,000 per country
(docs/performance.md, "Fine-tuning after the release"); LoRA after a release is not the
default anywhere it was measured."""
WARM_STARTED: dict[UpdateKind, dict[str, Any]] = {
    UpdateKind.HEAD: WARM_STARTED_HEAD,
    UpdateKind.LORA: WARM_STARTED_LORA,
    UpdateKind.LORA_FA: WARM_STARTED_LORA,
}
"""Update kinds that may follow a release, with their measured defaults: each trains a head
that starts from the release's class means (LoRA's adapters start at zero, so its first step
reads the release's head)."""


class TrainSection(Strict):
    """Federated schedule and local optimisation settings."""

    rounds: Annotated[int, Field(strict=True, ge=1, le=10_000)] = TRAINING_ROUNDS
    local_epochs: Annotated[int, Field(strict=True, ge=1, le=1000)] = 1
    batch_size: Annotated[int, Field(strict=True, ge=1, le=65_536)] = 32
    learning_rate: Annotated[float, Field(strict=True, gt=0, le=10, allow_inf_nan=False)] = 5e-4
    update: UpdateKind = DEFAULT_UPDATE
    warm_start: UpdateKind | None = None
    optimizer: Optimizer = Optimizer.ADAMW
    step_rule: StepRule = StepRule.FIXED
    transfer_dtype: TransferDtype = TransferDtype.FLOAT32
    lora_rank: Annotated[int, Field(strict=True, ge=1, le=256)] = 8
    lora_alpha: Annotated[int, Field(strict=True, ge=1, le=MAX_LORA_ALPHA)] = 16
    lora_targets: Annotated[list[str], Field(min_length=1)] = ["query", "value"]
    seed: Annotated[int, Field(strict=True)] = 0
    round_timeout_s: Annotated[float, Field(strict=True, gt=0)] = 3600.0
    nodes_timeout_s: Annotated[float, Field(strict=True, gt=0)] = 600.0
    min_nodes: Annotated[int, Field(strict=True, ge=1, le=256)] | None = None
    aggregation: Aggregation = Aggregation.FEDAVG
    trim_fraction: (
        Annotated[float, Field(strict=True, gt=0, lt=0.5, allow_inf_nan=False)] | None
    ) = None
    max_update_norm: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _robust_options_apply(self) -> TrainSection:
        """A robustness setting that would do nothing is refused, never silently ignored."""
        if self.trim_fraction is not None and self.aggregation is not Aggregation.TRIMMED_MEAN:
            raise ValueError(
                f'trim_fraction applies to aggregation = "trimmed-mean", not '
                f'"{self.aggregation.value}"; fix: aggregation = "trimmed-mean", or remove '
                "trim_fraction"
            )
        if not traits_for(self.update).is_release:
            return self
        if self.aggregation is not Aggregation.FEDAVG:
            raise ValueError(
                f'aggregation "{self.aggregation.value}" combines training rounds and update '
                f'"{self.update.value}" has none (its one release is summed); fix: remove '
                "aggregation"
            )
        if self.max_update_norm is not None:
            raise ValueError(
                f'max_update_norm bounds training updates and update "{self.update.value}" '
                "sends none (its release is bounded by its own sensitivity); fix: remove "
                "max_update_norm"
            )
        return self

    @property
    def trimmed_share(self) -> float:
        """``trim_fraction``, or its default: what ``trimmed-mean`` drops at each end."""
        return DEFAULT_TRIM_FRACTION if self.trim_fraction is None else self.trim_fraction

    def robustness_problem(self, countries: int) -> str | None:
        """Why ``aggregation`` cannot outvote one node in a round that closes at its quorum.

        A round may aggregate as few valid updates as ``required_nodes``. Flower's trimmed
        mean drops ``int(trim_fraction × n)`` updates at each end (none when that is 0), and a
        median of 2 is their mean: either would then pass one node's update through.
        """
        if self.aggregation is Aggregation.FEDAVG or countries == 0:
            return None
        first = 2 if self.warm_start is not None else 1  # a warm start's release is summed
        quorum = min(
            self.required_nodes(countries, r) for r in range(first, self.server_rounds + 1)
        )
        closes = f"a round may close with {quorum} valid update{'s' if quorum != 1 else ''}"
        fixes = []
        if self.aggregation is Aggregation.MEDIAN:
            if quorum >= MEDIAN_RESISTS_ONE:
                return None
            problem = (
                f"{closes}: one node moves a median of fewer than {MEDIAN_RESISTS_ONE} at will"
            )
            if countries >= MEDIAN_RESISTS_ONE:
                fixes.append(f"min_nodes = {MEDIAN_RESISTS_ONE} or more")
        else:
            beta = self.trimmed_share
            if int(beta * quorum) >= 1:
                return None
            problem = f"{closes}, of which trim_fraction {beta:g} drops none at either end"
            needed = math.ceil(1 / beta)
            while int(beta * needed) < 1:
                needed += 1
            if needed <= countries:
                fixes.append(f"min_nodes = {needed} or more")
            if quorum >= MEDIAN_RESISTS_ONE:
                fraction = math.ceil(100 / quorum) / 100
                median = 'aggregation = "median"'
                if self.trim_fraction is not None:
                    median += " without trim_fraction"
                fixes += [f"trim_fraction = {fraction:g} or more", median]
        if not fixes:
            fixes.append(
                f'aggregation = "fedavg" (a robust option needs {MEDIAN_RESISTS_ONE} '
                "countries or more)"
            )
        fix = ", or ".join(fixes)
        return f'train.aggregation "{self.aggregation.value}": {problem}; fix: {fix}'

    @model_validator(mode="before")
    @classmethod
    def _defaults_follow_the_pipeline(cls, data: Any) -> Any:
        """Unset settings take the values measured best for the job's pipeline.

        A job that names neither ``update`` nor ``warm_start`` runs :data:`DEFAULT_PIPELINE`.
        A release has one round; a head warm-started by a release takes full-batch plain
        gradient steps (:data:`WARM_STARTED_HEAD`), LoRA after a release AdamW on Poisson
        batches (:data:`WARM_STARTED_LORA`); every other kind keeps the field defaults and
        :data:`TRAINING_ROUNDS` rounds.
        """
        if not isinstance(data, dict):
            return data
        if "update" not in data and "warm_start" not in data:
            update, warm_start = DEFAULT_PIPELINE
            data = {
                **data,
                "update": update.value,
                **({} if warm_start is None else {"warm_start": warm_start.value}),
            }

        try:
            update = UpdateKind(data.get("update", DEFAULT_UPDATE))
            warm_start = None if data.get("warm_start") is None else UpdateKind(data["warm_start"])
        except (ValueError, TypeError):
            return data  # the field's own error names the bad value
        if traits_for(update).is_release:
            defaults: dict[str, Any] = {"rounds": 1}
        elif warm_start is not None and update in WARM_STARTED:
            defaults = dict(WARM_STARTED[update])
        else:
            defaults = {"rounds": TRAINING_ROUNDS}
        return {**defaults, **data}

    @model_validator(mode="after")
    def _a_pipeline_residency_runs(self) -> TrainSection:
        problem = pipeline_problem(
            self.update, self.warm_start, rounds=self.rounds, transfer_dtype=self.transfer_dtype
        )
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def server_rounds(self) -> int:
        """Rounds the coordinator runs: the warm start's release, then ``rounds`` of training."""
        return self.rounds + (1 if self.warm_start is not None else 0)

    def describe(self) -> str:
        """The schedule in words, for headers: "a prototypes release, then 5 rounds of head"."""
        if traits_for(self.update).is_release:
            return f"one {self.update.value} release"
        plural = "s" if self.rounds != 1 else ""
        training = f"{self.rounds} round{plural} of {self.update.value} updates"
        if self.warm_start is None:
            return training
        return f"a {self.warm_start.value} release, then {training}"

    def round_update(self, server_round: int, *, refine: bool = False) -> UpdateKind:
        """What round ``server_round`` runs: the warm start's release first, then ``update``.

        A refine (``refine``) is the release again.
        """
        return round_update(self.update, self.warm_start, server_round, refine=refine)

    def required_nodes(self, countries: int, server_round: int) -> int:
        """Valid updates round ``server_round`` needs from a job of ``countries`` countries.

        ``min_nodes`` when the job sets it. Otherwise all countries but one in round 1, then
        a strict majority but never every country: a job survives one node restarting (or
        dying) in any round at every federation size. The price, at two countries: a round
        whose other node is down averages one country's update, a round of local training
        that the next round's average absorbs. Round 1 still starts only with every country
        connected and agreed (:meth:`required_to_send`).
        """
        if self.min_nodes is not None:
            return min(self.min_nodes, countries)
        if server_round == 1:
            return max(1, countries - 1)
        return max(1, min(countries // 2 + 1, countries - 1))

    def required_to_send(self, countries: int, server_round: int) -> int:
        """Countries connected and agreed to the whole job before round ``server_round`` is sent.

        Round 1 waits for every country (``min_nodes`` when set): the federation starts whole,
        and a country that declines the job (it cannot afford it) ends it before anyone is
        charged. Later rounds go out once ``required_nodes`` are there.
        """
        if server_round > 1 or self.min_nodes is not None:
            return self.required_nodes(countries, server_round)
        return countries


PIPELINE_JOIN = "+"


def pipeline_name(update: UpdateKind, warm_start: UpdateKind | None) -> str:
    """``head``, or ``prototypes+head`` for a head warm-started by a release."""
    return update.value if warm_start is None else f"{warm_start.value}{PIPELINE_JOIN}{update}"


def parse_pipeline(name: str) -> tuple[UpdateKind, UpdateKind | None]:
    """(update, warm_start) of a pipeline name; ``ValueError`` names what is unknown."""
    first, _, then = name.strip().partition(PIPELINE_JOIN)
    return (UpdateKind(then), UpdateKind(first)) if then else (UpdateKind(first), None)


def pipeline_problem(
    update: UpdateKind,
    warm_start: UpdateKind | None,
    *,
    rounds: int,
    transfer_dtype: TransferDtype,
) -> str | None:
    """What makes a pipeline one Residency does not run, in one line with its fix; None if none.

    The one rule for a job file (``[train]``) and for every round plan a node receives
    (:class:`~residency.common.config.round_plan.RoundPlan`), so the two cannot drift.
    """
    if transfer_dtype is TransferDtype.FLOAT16 and not traits_for(update).float16_wire:
        return (
            f'transfer_dtype "float16" with update "{update.value}" rounds the weights, not the '
            'changes: most of a round\'s update is lost; fix: transfer_dtype = "float32", or a '
            "LoRA or head update"
        )
    if traits_for(update).is_release and rounds != 1:
        return f'update "{update.value}" is one release, not rounds of training; fix: rounds = 1'
    if warm_start is not None and (
        not traits_for(warm_start).is_release or update not in WARM_STARTED
    ):
        return (
            f'warm_start "{warm_start.value}" before update "{update.value}" is not a pipeline '
            'Residency runs; fix: warm_start = "prototypes" with update = "head", "lora" or '
            '"lora-fa", or remove warm_start'
        )
    return None


def refinable(update: UpdateKind, warm_start: UpdateKind | None) -> bool:
    """Whether a job's release may be refined: only before a head on the frozen encoder.

    A refine rebuilds the head from the encoder's base features; LoRA's adapters have moved
    the features it reads, so the rebuilt head would not fit them.
    """
    return warm_start is not None and update is UpdateKind.HEAD


def round_update(
    update: UpdateKind, warm_start: UpdateKind | None, server_round: int, *, refine: bool = False
) -> UpdateKind:
    """The update kind of one server round of a job: its warm start in round 1, if it has one.

    A refine asks the warm start's release again, whatever the round.
    """
    return warm_start if warm_start is not None and (server_round == 1 or refine) else update


MAX_TARGET_EPSILON = 100.0
WARM_START_SHARE = 0.5
"""Share of a job's epsilon its warm-start release spends; training gets the rest. Measured
with ``bench/pipeline_replay.py`` on seven regimes (docs/performance.md): half beats a quarter
at epsilon 1 on six of them (BBC topics 0.838 against 0.675, spam 0.892 against 0.862) and
ties elsewhere; the release's class means and feature mean are worth more than a quarter."""
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
    warm_start_share: Annotated[float, Field(strict=True, gt=0, lt=1, allow_inf_nan=False)] = (
        WARM_START_SHARE
    )


class NodeEntry(Strict):
    """One country in the job; ``data`` is its file in simulation (a deployed node owns its own).

    ``public_records`` and the privacy unit's settings too are a simulation's stand-in for
    what a node operator declares in ``node.toml``; a deployed node reads none from a job.
    """

    country: CountryCode
    data: Path | None = None
    public_records: Annotated[int, Field(strict=True, ge=1)] | None = Field(
        default=None,
        description="simulation only: the node's declared public size (default: its data's "
        "record count rounded to 2 significant figures)",
    )
    privacy_unit: PrivacyUnit | None = Field(
        default=None,
        description='simulation only: the node operator\'s privacy unit ("record" or "person")',
    )
    person_column: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None, description="simulation only, person unit: the column of person ids"
    )
    records_per_person: Annotated[int, Field(strict=True, ge=1, le=10_000)] | None = Field(
        default=None,
        description="simulation only, person unit: the cap on records per person (default "
        f"{DEFAULT_RECORDS_PER_PERSON}, as node init writes)",
    )
    public_people: Annotated[int, Field(strict=True, ge=1)] | None = Field(
        default=None,
        description="simulation only, person unit: the public number of people (default: the "
        "data's count of people rounded to 2 significant figures)",
    )

    @field_validator("data")
    @classmethod
    def _data_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _person_settings(self) -> NodeEntry:
        person = ("person_column", "records_per_person", "public_people")
        if self.privacy_unit is PrivacyUnit.PERSON:
            if self.person_column is None:
                raise ValueError(
                    'privacy_unit = "person" needs person_column; fix: add person_column = '
                    '"<the column with person ids>"'
                )
        elif any(getattr(self, name) is not None for name in person):
            raise ValueError(
                "person_column, records_per_person and public_people need privacy_unit = "
                '"person"; fix: add it, or remove them'
            )
        return self


class LaunchSection(Strict):
    """Which launch of a job this is and until when nodes run it: set by the signing launcher.

    The nonce makes every signing a new job with its own epsilon account on each node (the
    account is the signed bytes' hash), so a coordinator replaying a signed job under new
    Flower runs continues that one account instead of opening a fresh target; the expiry
    bounds how long a signed job stays usable at all.
    """

    nonce: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    expires_unix_s: Annotated[int, Field(strict=True, ge=0, le=2**40)]


TRACKING_URI_LAUNCHED = (
    "a launched job cannot choose where the coordinator writes; fix: remove tracking.uri "
    "(the coordinator's operator sets tracking_uri in coordinator.toml)"
)


class TrackingSection(Strict):
    """Log the run to MLflow, where operators already track experiments (optional extra).

    What is logged is what ``results.json`` holds (scores, bytes, each country's signed ε),
    never anything a node did not release. Tracking only watches: an unreachable server is
    logged and the job goes on.
    """

    uri: Annotated[str, Field(min_length=1, max_length=2048)] | None = Field(
        default=None,
        description="MLflow tracking URI (simulate only; default sqlite:///OUTPUT/mlflow.db)",
    )
    experiment: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None, description="experiment name (default: the job's name)"
    )
    log_model: bool = Field(default=True, description="log the final model folder too")

    @field_validator("uri")
    @classmethod
    def _not_from_a_launcher(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and _remote(info):
            raise ValueError(TRACKING_URI_LAUNCHED)
        return value


class Job(Strict):
    """A whole federated fine-tuning job."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "job"
    model: Annotated[ModelSection, Field(default_factory=ModelSection)]
    data: DataSection
    train: Annotated[TrainSection, Field(default_factory=TrainSection)]
    privacy: PrivacySection
    nodes: Annotated[list[NodeEntry], Field(default_factory=list, max_length=256)]
    launch: LaunchSection | None = None
    tracking: TrackingSection | None = None

    @field_validator("launch")
    @classmethod
    def _launch_is_the_signers(
        cls, value: LaunchSection | None, info: ValidationInfo
    ) -> LaunchSection | None:
        if value is not None and (info.context or {}).get("base_dir") is not None:
            raise ValueError(
                "set by `residency run` when it signs the job, never in a job file; "
                "fix: remove the [launch] table"
            )
        return value

    @field_validator("nodes")
    @classmethod
    def _unique_countries(cls, nodes: list[NodeEntry]) -> list[NodeEntry]:
        countries = [node.country for node in nodes]
        dupes = sorted({c for c in countries if countries.count(c) > 1})
        if dupes:
            raise ValueError(f"each country may appear once in [[nodes]], repeated: {dupes}")
        return nodes

    @model_validator(mode="after")
    def _min_nodes_fit(self) -> Job:
        wanted = self.train.min_nodes
        if wanted is not None and self.nodes and wanted > len(self.nodes):
            raise ValueError(
                f"train.min_nodes: {wanted} but the job names {len(self.nodes)} countries; "
                f"fix: min_nodes = {len(self.nodes)} or fewer"
            )
        return self

    @model_validator(mode="after")
    def _robust_at_the_quorum(self) -> Job:
        problem = self.train.robustness_problem(len(self.nodes))
        if problem is not None:
            raise ValueError(problem)
        return self

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


def load_job(path: Path, *, remote: bool = False) -> Job:
    """Load and validate a job file; relative paths resolve against its folder.

    ``remote``: the job runs on a coordinator, which opens the files it names (its test set,
    a checkpoint) in its own data folder, so those paths are kept as written.
    """
    path = Path(path)
    context = {"base_dir": path.resolve().parent, "remote": remote}
    return load_model(path, Job, context=context)
