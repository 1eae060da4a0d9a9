"""Ed25519 keys that sign privacy records and ledger entries.

A signer is identified by its raw 32-byte public key in hex, which every signed object carries,
so anyone holding the public key files (obtained from each party, not from the coordinator)
can check who signed what. Keys are stored in OpenSSH format: the private key owner-only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from residency.common.errors import ConfigError
from residency.common.files import write_atomic

PUBLIC_SUFFIX = ".pub"


@dataclass(frozen=True)
class Signer:
    """A private Ed25519 key and the hex of its public key."""

    key: Ed25519PrivateKey

    @property
    def public_hex(self) -> str:
        """Raw public key, hex: what records carry as ``key``."""
        return public_hex(self.key.public_key())

    def sign(self, body: bytes) -> str:
        """Signature over ``body``, hex."""
        return self.key.sign(body).hex()


def public_hex(key: Ed25519PublicKey) -> str:
    """Raw 32-byte public key as 64 hex digits."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def key_id(public: str) -> str:
    """Short, stable name of a public key for messages: first 16 hex of its SHA-256."""
    return hashlib.sha256(bytes.fromhex(public)).hexdigest()[:16]


def verify(public: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` (hex) is ``public``'s (hex) signature over ``body``."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
        key.verify(bytes.fromhex(signature), body)
    except (ValueError, InvalidSignature):
        return False
    return True


def create_signer(private: Path, *, comment: str) -> Signer:
    """Write a new key pair: ``private`` (OpenSSH, 0600) and ``private`` + ``.pub``."""
    key = Ed25519PrivateKey.generate()
    write_atomic(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_atomic(public_path(private), public + f" {comment}\n".encode())
    return Signer(key)


def public_path(private: Path) -> Path:
    """Where the public half of ``private`` lives."""
    return private.with_name(private.name + PUBLIC_SUFFIX)


def load_signer(private: Path) -> Signer:
    """Read an Ed25519 private key, or say which file is wrong and how to fix it."""
    try:
        key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"{private}: signing key not found; fix: restore it from backup") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{private}: not an OpenSSH private key ({exc}); fix: restore it from backup"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{private}: not an Ed25519 key; fix: use a key made by residency")
    return Signer(key)


def load_or_create_signer(private: Path, *, comment: str) -> Signer:
    """The key at ``private``, created on first use (simulation nodes, older node folders)."""
    if private.exists():
        return load_signer(private)
    return create_signer(private, comment=comment)


def load_public(path: Path) -> str:
    """Hex of the Ed25519 public key in an OpenSSH ``.pub`` file."""
    try:
        key = serialization.load_ssh_public_key(path.read_bytes().split(b"\n")[0])
    except (ValueError, IndexError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{path}: not an OpenSSH public key ({exc}); fix: copy the party's .pub file as is"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key; fix: pass the record signing key")
    return public_hex(key)
