"""The Flower App Bundle ``residency run`` submits: Residency's apps plus the job as config.

The bundle carries no code: its components point at the ``residency`` package every
coordinator and node has installed (runtime dependency installation is off), and the
validated job travels as JSON under the run-config key ``job``.
"""

from __future__ import annotations

from pathlib import Path

import tomli_w

from residency.common.config.signed_job import SignedJob
from residency.common.version import __version__
from residency.server.launch import JOB_KEY, JOB_LAUNCHER_KEY, JOB_SIGNATURE_KEY


def write_app_bundle(
    folder: Path,
    *,
    name: str,
    version: str,
    description: str,
    serverapp: str,
    clientapp: str,
    config: dict[str, str | int],
) -> Path:
    """Write a Flower App Bundle's ``pyproject.toml``: the two components and the run config."""
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": name,
            "version": version,
            "description": description,
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
            "flwr": {
                "app": {
                    "publisher": "residency",
                    "components": {"serverapp": serverapp, "clientapp": clientapp},
                    "config": config,
                }
            },
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text(tomli_w.dumps(project), encoding="utf-8")
    return path


def write_bundle(signed: SignedJob, folder: Path) -> Path:
    """Write the app's ``pyproject.toml`` into ``folder``: the apps and the signed job."""
    return write_app_bundle(
        folder,
        name="residency-job",
        version=__version__,
        description="Residency federated job",
        serverapp="residency.server.deployed_app:app",
        clientapp="residency.client.client_app:app",
        config={
            JOB_KEY: signed.body,
            JOB_LAUNCHER_KEY: signed.launcher,
            JOB_SIGNATURE_KEY: signed.signature,
        },
    )
