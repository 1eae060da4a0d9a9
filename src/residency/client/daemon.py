"""The node's folder and how its SuperNode and warm executor are started.

``residency node init DIR`` writes everything the node operator owns::

    DIR/node.toml      country, data path and schema, privacy budget and limits (only the
                       operator edits it)
    DIR/keys/node.key  the node's private key for SuperNode authentication (0600)
    DIR/keys/node.pub  the public key to hand to the coordinator
    DIR/keys/record.key      the Ed25519 key that signs privacy records and the node's ledger
    DIR/keys/record.key.pub  its public half, for auditors (handed to them directly)
    DIR/state/         the durable privacy budget store (every charge, write-ahead) and the
                       node's own signed ledger of every charge, record and refusal
    DIR/logs/          SuperNode, executor and node logs
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from residency.client.identity import PRIVATE_KEY, PUBLIC_KEY, create_identity
from residency.client.node_config import (
    NODE_CONFIG_KEY,
    RECORD_KEY,
    NodeSettings,
    load_node_settings,
)
from residency.client.node_data import check_node_data
from residency.client.policy import ca_fingerprint, load_policy
from residency.common.config.toml_file import write_model
from residency.common.data.readers import count_people, count_records
from residency.common.errors import ConfigError
from residency.common.parent_watch import PARENT_FLAG
from residency.common.privacy.public_size import rounded_size
from residency.common.privacy.signing import create_signer
from residency.common.privacy.unit import DEFAULT_RECORDS_PER_PERSON, PrivacyUnit

SETTINGS_FILE = "node.toml"
INIT_SCHEMA_FLAGS = "--text-column, --label-column, --labels"


@dataclass(frozen=True)
class NodeDir:
    """Paths inside a node folder."""

    root: Path

    @property
    def settings_file(self) -> Path:
        """``node.toml``."""
        return self.root / SETTINGS_FILE

    @property
    def private_key(self) -> Path:
        """SuperNode authentication key (never leaves the node)."""
        return self.root / "keys" / PRIVATE_KEY

    @property
    def public_key(self) -> Path:
        """What the coordinator admits."""
        return self.root / "keys" / PUBLIC_KEY

    @property
    def record_key(self) -> Path:
        """Ed25519 key signing privacy records (public half: ``record.key.pub``)."""
        return self.root / "keys" / RECORD_KEY

    @property
    def logs(self) -> Path:
        """Log files."""
        return self.root / "logs"

    def load(self) -> NodeSettings:
        """Read ``node.toml``, or explain how to create it."""
        if not self.settings_file.exists():
            raise ConfigError(
                f"{self.settings_file}: not found; fix: run `residency node init {self.root} "
                "--country XX --data FILE --labels A,B --budget-epsilon E --delta D` first"
            )
        return load_node_settings(self.settings_file)


def init_node(
    root: Path,
    *,
    country: str,
    data: Path,
    labels: list[str],
    budget_epsilon: float,
    delta: float,
    text_column: str = "text",
    label_column: str = "label",
    runtime_port: int = 9094,
    policy: Path | None = None,
    trusted_launchers: list[str] | None = None,
    public_records: int | None = None,
    person_column: str | None = None,
    records_per_person: int | None = None,
    public_people: int | None = None,
) -> NodeDir:
    """Write the operator's settings and a fresh key pair; refuse to overwrite a node.

    The data is read with the declared schema first, as a round will read it: a file that no
    round could use stops here, before anything is written.
    ``public_records`` defaults to the data file's record count rounded to 2 significant
    figures: the size the node may tell (:mod:`residency.common.privacy.public_size`).
    ``person_column`` makes the node person-level (``privacy_unit = "person"``);
    ``records_per_person`` defaults to the measured ``DEFAULT_RECORDS_PER_PERSON``, and
    ``public_people`` to the count of people in the file, rounded the same way. node.toml
    always states the cap, so an auditor reads it there and in every signed record.
    """
    folder = NodeDir(root)
    if folder.settings_file.exists():
        raise ConfigError(
            f"{folder.settings_file}: a node already lives here; fix: pick a new folder "
            "(re-running init would replace the key the coordinator admitted)"
        )
    if not data.is_file():
        raise ConfigError(f"--data: {data}: file not found; fix: pass the node's data file")
    if policy is not None:
        load_policy(policy)  # a policy the node could not read must not get this far
    if public_records is None:
        public_records = rounded_size(count_records(data))
    if person_column is None and (records_per_person or public_people):
        raise ConfigError(
            "--records-per-person/--public-people: they need --person-column; fix: name the "
            "column of person ids, or drop them"
        )
    if person_column is not None and records_per_person is None:
        records_per_person = DEFAULT_RECORDS_PER_PERSON
    if person_column is not None and public_people is None:
        public_people = rounded_size(
            count_people(
                data,
                text_column=text_column,
                label_column=label_column,
                labels=labels,
                person_column=person_column,
            )
        )
    try:
        settings = NodeSettings(
            country=country,
            data=data.resolve(),
            text_column=text_column,
            label_column=label_column,
            labels=labels,
            budget_epsilon=budget_epsilon,
            delta=delta,
            state=(folder.root / "state").resolve(),
            log=(folder.logs / "node.log").resolve(),
            runtime_port=runtime_port,
            policy=None if policy is None else policy.resolve(),
            signing_key=folder.record_key.resolve(),
            trusted_launchers=list(trusted_launchers or []),
            public_records=public_records,
            privacy_unit=PrivacyUnit.RECORD if person_column is None else PrivacyUnit.PERSON,
            person_column=person_column,
            records_per_person=records_per_person,
            public_people=public_people,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-")
        flag = {"--trusted-launchers": "--trust-launcher"}.get(flag, flag)
        message = str(err["msg"]).removeprefix("Value error, ").split("; fix: ")[0]
        raise ConfigError(
            f"{flag}: {message} (got {err.get('input')!r}); fix: correct the flag"
        ) from exc
    check_node_data(settings, schema_fix=INIT_SCHEMA_FLAGS)
    folder.logs.mkdir(parents=True, exist_ok=True)
    create_identity(folder.private_key.parent, comment=f"residency-node-{country}")
    create_signer(folder.record_key, comment=f"residency-record-{country}")
    write_model(
        folder.settings_file,
        settings,
        header=(
            "Residency node: the operator's own settings. The node reads its data path,\n"
            "the data's schema, budget and limits only from here, never from the coordinator."
        ),
    )
    return folder


def check_coordinator_allowed(settings: NodeSettings, ca: Path | None) -> None:
    """Refuse to start when the policy names coordinators and this CA is not one of them."""
    if settings.policy is None:
        return
    policy = load_policy(settings.policy)
    if not policy.allowed_coordinators:
        return
    if ca is None:
        raise ConfigError(
            f"{settings.policy}: allowed_coordinators: a plain-text coordinator cannot be "
            "identified; fix: start with --ca"
        )
    fingerprint = ca_fingerprint(ca.read_bytes())
    if fingerprint not in policy.allowed_coordinators:
        raise ConfigError(
            f"{settings.policy}: allowed_coordinators: CA {ca} (sha256 {fingerprint}) is not "
            "listed; fix: add its fingerprint to the policy if this coordinator is allowed"
        )


def supernode_command(
    folder: NodeDir,
    settings: NodeSettings,
    *,
    coordinator: str,
    ca: Path | None,
    insecure: bool,
    supervisor_pid: int | None = None,
) -> list[str]:
    """The SuperNode command line: authenticated with the node key unless ``insecure``.

    With ``supervisor_pid`` it is Flower's SuperNode wrapped to end with that process
    (:mod:`residency.client.supernode`), so a SIGKILLed ``node start`` leaves no orphan.
    """
    config = f'{NODE_CONFIG_KEY}="{folder.settings_file.resolve()}"'
    binary = [str(Path(sys.executable).parent / "flower-supernode")]
    if supervisor_pid is not None:
        binary = [sys.executable, "-m", "residency.client.supernode"]
        binary += [PARENT_FLAG, str(supervisor_pid)]
    command = [
        *binary,
        "--superlink",
        coordinator,
        "--node-config",
        config,
        "--isolation",
        "process",
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.runtime_port),
    ]
    if insecure:
        return [*command, "--insecure"]
    if ca is None:
        raise ConfigError("--ca: missing; fix: pass the coordinator's ca.pem (or --insecure)")
    return [
        *command,
        "--root-certificates",
        str(ca.resolve()),
        "--auth-supernode-private-key",
        str(folder.private_key.resolve()),
    ]


def executor_command(settings: NodeSettings, *, supervisor_pid: int) -> list[str]:
    """The warm executor that runs this node's ClientApp tasks; it ends with its supervisor."""
    return [
        sys.executable,
        "-m",
        "residency.client.executor",
        "--runtime-api-address",
        f"127.0.0.1:{settings.runtime_port}",
        "--parent-pid",
        str(supervisor_pid),
    ]


def daemon_env() -> dict[str, str]:
    """Environment for both processes: poll the local SuperNode often (loopback is cheap)."""
    return {**os.environ, "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}


def explain_supernode_exit(log_text: str, folder: NodeDir, country: str) -> str:
    """One line saying why the SuperNode stopped, from its own log."""
    if "CERTIFICATE_VERIFY_FAILED" in log_text:
        return (
            "the coordinator's certificate is not signed by the given CA; fix: use the "
            "coordinator's tls/ca.pem with --ca and an address named in its certificate"
        )
    if "Failed to activate SuperNode" in log_text:
        return (
            f"the coordinator refused this node's key (not admitted); fix: send "
            f"{folder.public_key} to the coordinator, who runs `residency coordinator admit "
            f"node.pub --country {country}`"
        )
    if "Exit Code: 303" in log_text:
        return "node authentication needs TLS; fix: pass --ca instead of --insecure"
    lines = [line for line in log_text.splitlines() if line.strip()]
    tail = lines[-1].strip() if lines else "no output"
    return f"the SuperNode stopped ({tail}); see {folder.logs / 'supernode.log'}"
