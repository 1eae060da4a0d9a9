"""The coordinator's folder and how its SuperLink is started.

``residency coordinator init DIR`` lays out everything a coordinator owns in one folder, so
backing it up or moving it is one copy::

    DIR/coordinator.toml   settings (addresses, names in the certificate)
    DIR/tls/               private CA and SuperLink's certificate (keys 0600)
    DIR/state/superlink.db SuperLink's SQLite state (admitted nodes, runs)
    DIR/runs/<run id>/     each run's output folder (results.json, model/)
    DIR/logs/              SuperLink and coordinator logs
    DIR/nodes.json         which country each admitted key belongs to
    DIR/ledger/            the signed, hash-chained privacy ledger and the updates it names
    DIR/keys/ledger.key    the Ed25519 key that signs ledger entries (ledger.key.pub: public)
    DIR/data/              the only files a launched job may name (test sets, checkpoints)
    DIR/keys/launcher.key  a launcher key coordinator.toml trusts, for this operator's jobs
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator

from residency.common.config.job import Strict
from residency.common.config.loading import load_model
from residency.common.config.signed_job import LauncherKey
from residency.common.config.toml_file import write_model
from residency.common.errors import ConfigError
from residency.common.parent_watch import PARENT_FLAG
from residency.common.privacy.signing import create_signer
from residency.server.launch import (
    ADMITTED_ENV,
    COORDINATOR_SETTINGS_ENV,
    DATA_DIR_ENV,
    LEDGER_DIR_ENV,
    LEDGER_KEY_ENV,
    RUNS_DIR_ENV,
)
from residency.server.tls import TlsFiles, create_tls

SETTINGS_FILE = "coordinator.toml"
DEFAULT_PORT = 9092
DEFAULT_CONCURRENT_RUNS = 2
"""Jobs a coordinator runs at once by default. Each node trains one round at a time, so
every job beyond the first that shares a node waits there for the others' rounds; two keep
nodes busy without pushing a round past its ``round_timeout_s`` behind a long queue."""
_NAME = re.compile(r"^[A-Za-z0-9.*:-]{1,253}$")


class CoordinatorSettings(Strict):
    """What ``coordinator init`` decided; edit ``host``/``port`` to rebind."""

    host: str = Field(default="0.0.0.0", description="interface SuperLink listens on")
    port: Annotated[int, Field(strict=True, ge=1, le=65_535)] = DEFAULT_PORT
    names: Annotated[list[str], Field(min_length=1)] = Field(
        description="DNS names / IP addresses in the server certificate"
    )
    trusted_launchers: list[LauncherKey] = Field(
        default_factory=list,
        description="public keys (64 hex, from `residency launcher init`) whose signed jobs "
        "this coordinator runs; it refuses every other job before reading a file",
    )
    data: str = Field(
        default="data",
        description="folder (relative to this file's folder, or absolute) of the only files a "
        "launched job may name: its test set, a checkpoint",
    )
    tracking_uri: Annotated[str, Field(min_length=1, max_length=2048)] | None = Field(
        default=None,
        description="MLflow tracking URI for jobs with a [tracking] table (default: "
        "sqlite:///DIR/tracking/mlflow.db); a launched job cannot choose it",
    )
    max_concurrent_runs: Annotated[int, Field(strict=True, ge=1, le=64)] = Field(
        default=DEFAULT_CONCURRENT_RUNS,
        description="jobs run at once; later launches wait in a queue, oldest first (`runs` "
        "lists them as queued). Read at each check: an edit applies without a restart",
    )

    @field_validator("names")
    @classmethod
    def _valid_names(cls, names: list[str]) -> list[str]:
        bad = [name for name in names if not _NAME.match(name)]
        if bad:
            raise ValueError(f"not a DNS name or IP address: {', '.join(bad)}")
        return names

    @property
    def address(self) -> str:
        """The address nodes and the CLI dial: first certificate name and the port."""
        name = self.names[0]
        return f"[{name}]:{self.port}" if ":" in name else f"{name}:{self.port}"


@dataclass(frozen=True)
class CoordinatorDir:
    """Paths inside a coordinator folder."""

    root: Path

    @property
    def settings_file(self) -> Path:
        """``coordinator.toml``."""
        return self.root / SETTINGS_FILE

    @property
    def tls(self) -> TlsFiles:
        """CA and server certificate."""
        return TlsFiles(self.root / "tls")

    @property
    def database(self) -> Path:
        """SuperLink's SQLite state."""
        return self.root / "state" / "superlink.db"

    @property
    def runs(self) -> Path:
        """One output folder per run."""
        return self.root / "runs"

    @property
    def logs(self) -> Path:
        """Log files."""
        return self.root / "logs"

    @property
    def flwr_home(self) -> Path:
        """Flower's home for the SuperLink process (installed app bundles)."""
        return self.root / "flwr"

    @property
    def admitted(self) -> Path:
        """Country of each admitted node key."""
        return self.root / "nodes.json"

    @property
    def ledger(self) -> Path:
        """The privacy ledger folder."""
        return self.root / "ledger"

    @property
    def launcher_key(self) -> Path:
        """A launcher key made at init and trusted, so this operator can launch at once."""
        return self.root / "keys" / "launcher.key"

    @property
    def ledger_key(self) -> Path:
        """The ledger signing key (its public half is ``ledger.key.pub``)."""
        return self.root / "keys" / "ledger.key"

    def data(self, settings: CoordinatorSettings) -> Path:
        """The folder launched jobs may read files from."""
        return self.root / settings.data

    def load(self) -> CoordinatorSettings:
        """Read ``coordinator.toml``, or explain how to create it."""
        if not self.settings_file.exists():
            raise ConfigError(
                f"{self.settings_file}: not found; fix: run `residency coordinator init "
                f"{self.root} --san HOST` first"
            )
        return load_model(self.settings_file, CoordinatorSettings)


def init_coordinator(
    root: Path,
    *,
    names: list[str],
    host: str = "0.0.0.0",
    port: int = DEFAULT_PORT,
    launchers: list[str] | None = None,
) -> CoordinatorDir:
    """Create the CA, the server certificate and the settings; refuse an existing coordinator."""
    folder = CoordinatorDir(root)
    if folder.settings_file.exists():
        raise ConfigError(
            f"{folder.settings_file}: a coordinator already lives here; fix: pick a new folder "
            "(re-running init would replace the CA every node trusts)"
        )
    try:
        settings = CoordinatorSettings(
            host=host, port=port, names=names, trusted_launchers=list(launchers or [])
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = {"names": "--san", "trusted_launchers": "--trust-launcher"}.get(
            str(err["loc"][0]), f"--{err['loc'][0]}"
        )
        message = err["msg"].removeprefix("Value error, ")
        fix = (
            "pass the 64 hex digits `residency launcher init` printed"
            if flag == "--trust-launcher"
            else "pass DNS names or IP addresses"
        )
        raise ConfigError(f"{flag}: {message}; fix: {fix}") from exc
    for sub in (
        folder.database.parent,
        folder.runs,
        folder.logs,
        folder.flwr_home,
        folder.data(settings),
    ):
        sub.mkdir(parents=True, exist_ok=True)
    create_tls(folder.tls.folder, names=names, common_name=names[0])
    create_signer(folder.ledger_key, comment="residency-coordinator-ledger")
    launcher = create_signer(folder.launcher_key, comment="residency-launcher")
    settings.trusted_launchers.append(launcher.public_hex)
    write_model(
        folder.settings_file,
        settings,
        header="Residency coordinator. Nodes dial `address`; they trust tls/ca.pem.",
    )
    return folder


def superlink_command(
    folder: CoordinatorDir, settings: CoordinatorSettings, *, insecure: bool
) -> tuple[list[str], dict[str, str]]:
    """SuperLink's command line and environment for this coordinator."""
    bin_dir = Path(sys.executable).parent
    command = [
        sys.executable,
        "-m",
        "residency.server.superlink",  # flower-superlink with a longer SQLite lock timeout
        PARENT_FLAG,  # and stopped when this process dies
        str(os.getpid()),
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--database",
        str(folder.database),
        "--disable-runtime-dependency-installation",
        "--log-file",
        str(folder.logs / "superlink.log"),
    ]
    if insecure:
        command.append("--insecure")
    else:
        tls = folder.tls
        command += [
            "--ssl-ca-certfile",
            str(tls.ca_cert),
            "--ssl-certfile",
            str(tls.server_cert),
            "--ssl-keyfile",
            str(tls.server_key),
            "--enable-supernode-auth",
        ]
    env = {
        **os.environ,
        RUNS_DIR_ENV: str(folder.runs.resolve()),
        ADMITTED_ENV: str(folder.admitted.resolve()),
        LEDGER_DIR_ENV: str(folder.ledger.resolve()),
        LEDGER_KEY_ENV: str(folder.ledger_key.resolve()),
        DATA_DIR_ENV: str(folder.data(settings).resolve()),
        COORDINATOR_SETTINGS_ENV: str(folder.settings_file.resolve()),
        "FLWR_HOME": str(folder.flwr_home.resolve()),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return command, env
