"""The node operator's own settings: the only source of the node's data path and identity.

In deployment the SuperNode is started with ``--node-config 'residency-config="NODE.toml"'``.
In simulation each virtual node finds its file as ``$RESIDENCY_SIMULATION_NODES/<id>.toml``,
written by ``residency simulate`` from the job's ``[[nodes]]`` tables. Never from a message.

The data's schema (its text and label columns, and its label set in the federation's order)
is the operator's too: the node reads its file only with it, and a job is compared with it,
never with the data, so no job can ask the node a question about the data's contents.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from residency.common.config.job import BUILTIN_MODELS, Strict
from residency.common.config.loading import describe_validation_error, read_toml
from residency.common.config.signed_job import LauncherKey
from residency.common.country import CountryCode
from residency.common.errors import ConfigError
from residency.common.privacy.public_size import far_from
from residency.common.privacy.unit import PrivacyUnit

NODE_CONFIG_KEY = "residency-config"
RECORD_KEY = "record.key"
LEDGER_FILE = "ledger.jsonl"
SIMULATION_NODES_ENV = "RESIDENCY_SIMULATION_NODES"


class NodeSettings(Strict):
    """What a country's operator decides for its node."""

    country: CountryCode
    data: Path
    text_column: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        default="text", description="the data's column (JSONL: key) that holds each text"
    )
    label_column: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        default="label", description="the data's column (JSONL: key) that holds each label"
    )
    labels: Annotated[list[str], Field(min_length=2, max_length=1000)] = Field(
        description="the data's label set, in the order the federation's jobs list it "
        "(a label's position is its class index in every country); a record with another "
        "label is skipped and counted in the node's log"
    )
    budget_epsilon: Annotated[float, Field(strict=True, gt=0, le=1000)] = Field(
        description="largest target epsilon this node accepts for a job on its data"
    )
    delta: Annotated[float, Field(strict=True, gt=0, lt=1)] = Field(
        description="largest delta this node accepts"
    )
    public_records: Annotated[int, Field(strict=True, ge=1)] = Field(
        description="the data's record count as the node may tell it, treated as public: "
        "choose a rounded figure (`residency node init` proposes the count rounded to 2 "
        "significant figures); sample rates, FedAvg weights and the signed `examples` use it, "
        "never the exact count"
    )
    privacy_unit: PrivacyUnit = Field(
        default=PrivacyUnit.RECORD,
        description='what epsilon protects: "record" (one record) or "person" (one person '
        "and all their records, identified by person_column); no job can change it",
    )
    person_column: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None,
        description='privacy_unit = "person": the data\'s column (JSONL: key) that identifies '
        "the person a record is about (a patient, customer or case id)",
    )
    records_per_person: Annotated[int, Field(strict=True, ge=1, le=10_000)] | None = Field(
        default=None,
        description='privacy_unit = "person": at most this many records of each person are '
        "used (their first ones in the file); more never reach a round",
    )
    public_people: Annotated[int, Field(strict=True, ge=1)] | None = Field(
        default=None,
        description='privacy_unit = "person": the number of people in the data as the node '
        "may tell it, treated as public like public_records (a rounded figure); sample rates, "
        "FedAvg weights and the signed `examples` use it",
    )
    dataset: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] | None = Field(
        default=None,
        description="name of the budget account of `data` (default: the data file's name); "
        "jobs never choose it, and only `residency node budget reset` opens a new one",
    )
    noise_seed: Annotated[int, Field(strict=True, ge=0, lt=2**63)] | None = Field(
        default=None,
        description="TESTS AND BENCHMARKS ONLY: seeds the noise and batches so runs repeat; "
        "every record then says so and `audit verify` reports it as not DP",
    )
    models: list[Path] = Field(
        default_factory=list,
        description="checkpoint folders a job may name besides the shipped minilm and tiny; "
        "the node loads no other path a coordinator sends",
    )
    state: Path = Field(description="folder of the node's durable privacy budget store")
    policy: Path | None = Field(default=None, description="the jurisdiction's policy file")
    log: Path | None = Field(default=None, description="file the node logs to, if any")
    signing_key: Path | None = Field(
        default=None,
        description="Ed25519 key that signs privacy records (default: record.key in state)",
    )
    runtime_port: Annotated[int, Field(strict=True, ge=1, le=65_535)] = Field(
        default=9094, description="loopback port between the SuperNode and its executor"
    )
    reservation_hours: Annotated[float, Field(strict=True, gt=0, le=24 * 365)] = Field(
        default=72.0,
        description="how long the node holds a job's whole budget after it confirms the job "
        "or charges a round of it; other jobs cannot spend what is held",
    )
    metrics_address: (
        Annotated[str, Field(pattern=r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")] | None
    ) = Field(
        default=None,
        description="HOST:PORT where `node start` serves Prometheus metrics (/metrics): budget "
        "spent and held per dataset, charges, refusals by code; off unless set",
    )
    trusted_launchers: list[LauncherKey] = Field(
        default_factory=list,
        description="public keys (64 hex, from `residency launcher init`) of the launchers "
        "whose signed jobs this node runs; with none, it refuses every job",
    )

    @field_validator("labels")
    @classmethod
    def _label_set(cls, value: list[str]) -> list[str]:
        for label in value:
            if not label or label != label.strip():
                raise ValueError(
                    f"label {label!r} is empty or has outer spaces; fix: write each label "
                    "exactly as the data file does"
                )
        dupes = sorted({label for label in value if value.count(label) > 1})
        if dupes:
            raise ValueError(f"labels repeat {', '.join(dupes)}; fix: list each label once")
        return value

    @model_validator(mode="after")
    def _person_settings(self) -> NodeSettings:
        person = ("person_column", "records_per_person", "public_people")
        if self.privacy_unit is PrivacyUnit.PERSON:
            missing = [name for name in person if getattr(self, name) is None]
            if missing:
                raise ValueError(
                    f'privacy_unit = "person" needs {", ".join(missing)}; fix: add '
                    'person_column = "<the column with person ids>", records_per_person = '
                    "<cap, e.g. 10> and public_people = <the number of people, rounded>"
                )
        else:
            stray = [name for name in person if getattr(self, name) is not None]
            if stray:
                raise ValueError(
                    f'{", ".join(stray)}: set, but privacy_unit is "record"; fix: add '
                    'privacy_unit = "person", or remove them'
                )
        return self

    @property
    def public_size(self) -> int:
        """The public size in the privacy unit: people, or records."""
        if self.privacy_unit is PrivacyUnit.PERSON and self.public_people is not None:
            return self.public_people
        return self.public_records

    @property
    def records_per_unit(self) -> float:
        """Records a privacy unit holds on average, from the public sizes (1 per record).

        Under person-level DP: ``public_records / public_people``, at most the cap.
        """
        if self.privacy_unit is not PrivacyUnit.PERSON or not self.public_people:
            return 1.0
        held = self.public_records / self.public_people
        return max(1.0, min(held, float(self.records_per_person or 1)))

    @property
    def dataset_name(self) -> str:
        """The operator's name for the budget account of ``data``."""
        return self.dataset or self.data.name

    @property
    def record_key(self) -> Path:
        """The private key that signs this node's privacy records and ledger."""
        return self.signing_key or self.state / RECORD_KEY

    @property
    def ledger(self) -> Path:
        """The node's own copy of everything it charged and signed."""
        return self.state / LEDGER_FILE

    @field_validator("data", "state", "policy", "log", "signing_key")
    @classmethod
    def _relative_to_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir")
        if value is None or value.is_absolute() or base is None:
            return value
        return Path(base) / value

    @field_validator("models")
    @classmethod
    def _models_relative_to_file(cls, value: list[Path], info: ValidationInfo) -> list[Path]:
        base = (info.context or {}).get("base_dir")
        if base is None:
            return value
        return [path if path.is_absolute() else Path(base) / path for path in value]

    def may_load(self, model: str) -> bool:
        """Whether a job may make this node load ``model``; decided without touching the disk.

        The comparison is lexical (absolute, normalised paths), so a coordinator cannot make
        the node stat, list or read a folder the operator did not name.
        """
        if model in BUILTIN_MODELS:
            return True
        if not os.path.isabs(model):
            return False
        wanted = os.path.normpath(model)
        return any(os.path.normpath(os.path.abspath(path)) == wanted for path in self.models)


PUBLIC_RECORDS_FIX = (
    "fix: add public_records = <your data's record count, rounded, e.g. to 2 significant "
    "figures>; it is treated as public, the exact count never leaves the node"
)


def load_node_settings(path: Path) -> NodeSettings:
    """Read a node file; relative data paths resolve against the file's folder.

    A file written before the schema moved into ``node.toml`` lacks ``labels``, and one
    written before sizes were public lacks ``public_records``; each gets its own message,
    since "add it" alone would not say what it must hold.
    """
    raw = read_toml(path)
    if "labels" not in raw:
        raise ConfigError(
            f"{path}: labels: required key is missing (the node declares its data's schema); "
            'fix: add labels = ["...", "..."], the label names of the data file in the order '
            "the federation's jobs list them, and text_column/label_column if they are not "
            '"text" and "label"'
        )
    if "public_records" not in raw:
        raise ConfigError(f"{path}: public_records: required key is missing; {PUBLIC_RECORDS_FIX}")
    try:
        return NodeSettings.model_validate(raw, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, exc)) from exc


def warn_if_far(settings: NodeSettings, records: int, log: logging.Logger) -> None:
    """Tell the operator, in the node's own log only, when the data is far from its public size.

    Never a refusal, never in a reply: what the coordinator sees must not depend on the count.
    """
    if far_from(records, settings.public_records):
        log.warning(
            "%s: the data file has %d records, far from public_records = %d in node.toml "
            "(outside [P/2, 2P]): privacy is unchanged, but training steps are scaled for %d "
            "records; fix: set public_records to a rounded figure near the real count",
            settings.country,
            records,
            settings.public_records,
            settings.public_records,
        )


def node_settings_path(node_config: dict[str, object]) -> Path:
    """Locate this node's settings file from Flower's node config (never from the job)."""
    if NODE_CONFIG_KEY in node_config:
        return Path(str(node_config[NODE_CONFIG_KEY]))
    folder = os.environ.get(SIMULATION_NODES_ENV)
    if folder and "partition-id" in node_config:
        return Path(folder) / f"{int(str(node_config['partition-id']))}.toml"
    raise ConfigError(
        f"node config: {NODE_CONFIG_KEY}: not set; fix: start the SuperNode with "
        f"--node-config '{NODE_CONFIG_KEY}=\"/path/to/node.toml\"'"
    )
