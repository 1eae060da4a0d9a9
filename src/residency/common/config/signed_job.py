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
import secrets
import time
from collections.abc import Collection
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError

from residency.common.config.job import Job, LaunchSection, Strict
from residency.common.config.loading import describe_validation_error
from residency.common.errors import ConfigError
from residency.common.privacy.canonical import canonical_json
from residency.common.privacy.signing import Signer, key_id, verify

PUBLIC_KEY = r"^[0-9a-f]{64}$"
LauncherKey = Annotated[str, Field(pattern=PUBLIC_KEY)]
"""A launcher's raw Ed25519 public key, 64 hex digits (``residency launcher init`` prints it)."""

MAX_JOB_BYTES = 65_536
VALID_DAYS = 30
"""How long a signed job stays runnable by default (``residency run --valid-days``)."""


class UntrustedJob(ConfigError):
    """A job that is unsigned, signed by a key nobody here trusts, or edited after signing."""


class ExpiredJob(UntrustedJob):
    """A signed job past the expiry its launcher signed: nobody runs it any more."""


class SignedJob(Strict):
    """The job's canonical JSON, its launcher's public key and the signature over the JSON."""

    body: Annotated[str, Field(min_length=2, max_length=MAX_JOB_BYTES)]
    launcher: LauncherKey
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]

    @property
    def sha256(self) -> str:
        """The hash of the signed bytes: which job a privacy record was spent on."""
        return hashlib.sha256(self.body.encode("ascii")).hexdigest()


SIMULATION_ONLY = ("privacy_unit", "person_column", "records_per_person", "public_people")
"""A node's simulation-only settings that are left out of the signed bytes altogether (jobs
signed before they existed keep their bytes, and so their hash and signature)."""


def job_body(job: Job) -> str:
    """What a launcher signs: the job without its nodes' simulation-only settings."""
    local = {"data": None, "public_records": None}
    shipped = job.model_copy(
        update={"nodes": [node.model_copy(update=local) for node in job.nodes]}
    ).model_dump(mode="json")
    for node in shipped["nodes"]:
        for key in SIMULATION_ONLY:
            node.pop(key, None)
    return canonical_json(shipped)


def new_launch(*, valid_days: float = VALID_DAYS, now_s: float | None = None) -> LaunchSection:
    """A fresh nonce (OS entropy) and an expiry ``valid_days`` from now."""
    if not 0 < valid_days <= 3660:
        raise ValueError(f"valid days {valid_days:g} must lie in (0, 3660]")
    start = time.time() if now_s is None else now_s
    return LaunchSection(
        nonce=secrets.token_hex(16), expires_unix_s=int(start + valid_days * 86_400)
    )


def sign_job(job: Job, signer: Signer, *, launch: LaunchSection | None = None) -> SignedJob:
    """Sign ``job`` as ``signer``'s launcher, as a new launch unless ``launch`` is given.

    Each call without ``launch`` draws a new nonce: signing the same job file twice launches
    two jobs, each with its own target on every node.
    """
    tracking = job.tracking  # where a simulation tracks is its own business, not the nodes'
    if tracking is not None:
        tracking = tracking.model_copy(update={"uri": None})
    body = job_body(job.model_copy(update={"launch": launch or new_launch(), "tracking": tracking}))
    return SignedJob(
        body=body, launcher=signer.public_hex, signature=signer.sign(body.encode("ascii"))
    )


def open_job(
    signed: SignedJob | None,
    trusted: Collection[str],
    *,
    operator: str,
    now_s: float | None = None,
) -> Job:
    """The signed job, if a key ``operator`` trusts signed exactly these bytes, unexpired.

    ``operator`` names whose list decided ("coordinator.toml", "node.toml") in the refusal.
    File paths in the job are kept as written: this opens no file. A job signed without a
    launch section (nonce and expiry) is refused: its replays could not be told apart.
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
        job = Job.model_validate_json(signed.body, context={"remote": True})
    except ValidationError as exc:
        raise UntrustedJob(describe_validation_error(Path("signed job"), exc)) from exc
    if job.launch is None:
        raise UntrustedJob(
            "job: signed without a launch nonce and expiry; fix: sign it again with this "
            "version's `residency run --key`"
        )
    expires = job.launch.expires_unix_s
    if (time.time() if now_s is None else now_s) >= expires:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        raise ExpiredJob(
            f"job: expired at {when}; "
            "fix: launch it again with `residency run --key` (a new job, with its own target)"
        )
    return job
