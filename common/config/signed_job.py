"""A job as its launcher signed it: coordinators and nodes act only on keys they trust.

Flower's open-source SuperLink lets anything that reaches its port submit a run, and every
admitted node must reach that port, so the submitter is no proof of anything. A launcher signs
the job's canonical JSON with its own Ed25519 key (``residency launcher init``); the
coordinator refuses a job no key in its ``trusted_launchers`` signed before it opens any file
the job names, and each node checks the same signature against its own operator's list and
that the round plan is the signed job's, before any charge. The node's signed privacy record
then names the launcher key and the job's hash, so auditors see who spent what.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError

from residency.common.config.job import Job, Strict
from residency.common.config.loading import describe_validation_error
from residency.common.errors import ConfigError
from residency.common.privacy.canonical import canonical_json
from residency.common.privacy.signing import Signer, key_id, verify

PUBLIC_KEY = r"^[0-9a-f]{64}$"
LauncherKey = Annotated[str, Field(pattern=PUBLIC_KEY)]
"""A launcher's raw Ed25519 public key, 64 hex digits (``residency launcher init`` prints it)."""

MAX_JOB_BYTES = 65_536


class UntrustedJob(ConfigError):
    """A job that is unsigned, signed by a key nobody here trusts, or edited after signing."""


class SignedJob(Strict):
    """The job's canonical JSON, its launcher's public key and the signature over the JSON."""

    body: Annotated[str, Field(min_length=2, max_length=MAX_JOB_BYTES)]
    launcher: LauncherKey
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]

    @property
    def sha256(self) -> str:
        """The hash of the signed bytes: which job a privacy record was spent on."""
        return hashlib.sha256(self.body.encode("ascii")).hexdigest()


def job_body(job: Job) -> str:
    """What a launcher signs: the job without its nodes' simulation-only settings."""
    local = {"data": None, "public_records": None}
    shipped = job.model_copy(
        update={"nodes": [node.model_copy(update=local) for node in job.nodes]}
    )
    return canonical_json(shipped)


def sign_job(job: Job, signer: Signer) -> SignedJob:
    """Sign ``job`` as ``signer``'s launcher."""
    body = job_body(job)
    return SignedJob(
        body=body, launcher=signer.public_hex, signature=signer.sign(body.encode("ascii"))
    )


def open_job(signed: SignedJob | None, trusted: Collection[str], *, operator: str) -> Job:
    """The signed job, if a key ``operator`` trusts signed exactly these bytes.

    ``operator`` names whose list decided ("coordinator.toml", "node.toml") in the refusal.
    File paths in the job are kept as written: this opens no file.
    """
    if signed is None:
        raise UntrustedJob(
            "job: not signed; fix: launch it with `residency run --key launcher.key`, a key "
            f"listed in trusted_launchers of {operator}"
        )
    if signed.launcher not in trusted:
        raise UntrustedJob(
            f"job: signed by launcher key {key_id(signed.launcher)}, which {operator} does not "
            f"trust; fix: the operator adds the key to trusted_launchers in {operator}"
        )
    if not verify(signed.launcher, signed.body.encode("ascii"), signed.signature):
        raise UntrustedJob(
            f"job: the signature of launcher key {key_id(signed.launcher)} does not match the "
            "job (edited after signing); fix: sign the job again with `residency run --key`"
        )
    try:
        return Job.model_validate_json(signed.body, context={"remote": True})
    except ValidationError as exc:
        raise UntrustedJob(describe_validation_error(Path("signed job"), exc)) from exc
