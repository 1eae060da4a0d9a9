"""The node's identity: the EC P-384 key pair SuperNode authentication uses.

The private key stays in the node's folder (owner-only); the operator sends the public key to
the coordinator out of band, who admits it with ``residency coordinator admit``.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from residency.common.files import write_atomic

PRIVATE_KEY = "node.key"
PUBLIC_KEY = "node.pub"


def create_identity(folder: Path, *, comment: str) -> tuple[Path, Path]:
    """Create ``node.key`` (OpenSSH private, 0600) and ``node.pub`` (OpenSSH public)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_atomic(folder / PRIVATE_KEY, private, mode=0o600)
    write_atomic(folder / PUBLIC_KEY, public + f" {comment}\n".encode())
    return folder / PRIVATE_KEY, folder / PUBLIC_KEY
