"""The node operator's jurisdiction policy: limits no job and no coordinator can lift.

A policy is a TOML file the operator points ``node.toml`` at (examples in ``docs/policies/``).
The node checks every round against it before reading its data, and its hash identifies the
exact rules a round ran under.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from residency.common.config.job import Strict
from residency.common.config.kinds import UpdateKind
from residency.common.config.loading import load_model
from residency.common.privacy.canonical import canonical_json
from residency.common.privacy.unit import PrivacyUnit


class Policy(Strict):
    """What the jurisdiction allows on this node's data (absent limits are not enforced)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    max_epsilon_per_dataset: Annotated[float | None, Field(strict=True, gt=0)] = Field(
        default=None, description="lifetime epsilon over every job on one dataset"
    )
    max_delta: Annotated[float | None, Field(strict=True, gt=0, lt=1)] = None
    min_noise_multiplier: Annotated[float | None, Field(strict=True, ge=0)] = None
    allowed_updates: Annotated[list[UpdateKind], Field(min_length=1)] = Field(
        default_factory=lambda: list(UpdateKind)
    )
    min_examples_per_round: Annotated[int, Field(strict=True, ge=1)] = 1
    allowed_coordinators: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default=[], description="SHA-256 of the coordinator CA certificates (DER) to trust"
    )
    privacy_unit: PrivacyUnit | None = Field(
        default=None,
        description='"person": every job on this node must protect people, so a node whose '
        'node.toml says privacy_unit = "record" refuses them all',
    )

    @field_validator("allowed_updates")
    @classmethod
    def _unique(cls, kinds: list[UpdateKind]) -> list[UpdateKind]:
        return list(dict.fromkeys(kinds))

    def digest(self) -> str:
        """SHA-256 of the policy's canonical JSON: the same rules always hash the same."""
        return hashlib.sha256(canonical_json(self).encode()).hexdigest()


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file (one-line errors naming file and field)."""
    return load_model(path, Policy)


def ca_fingerprint(pem: bytes) -> str:
    """SHA-256 of a PEM certificate's DER bytes, as `openssl x509 -fingerprint -sha256` shows."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    certificate = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()
