"""Where a node's DP randomness comes from: fresh OS entropy every round, never a message.

Whoever can regenerate a round's Poisson masks and Gaussian noise can subtract the noise
from the update and read the clipped gradient sum in the clear. So nothing the coordinator
or a launcher sends (job seed, round number, country, labels) feeds these generators: each
round draws its seeds from ``os.urandom`` on the node. The job's ``seed`` still fixes model
initialisation, which every party shares anyway.

An operator may set ``noise_seed`` in ``node.toml`` for tests and benchmarks that must
repeat exactly; the node's signed record then says ``operator-seed`` and ``residency audit
verify`` reports the record as not DP.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch

from residency.common.privacy.record import NoiseSource

SEED_BYTES = 8
"""A ``torch.Generator`` takes a 64-bit seed: that much OS entropy per generator per round."""


def os_entropy(size: int) -> bytes:
    """The node's entropy source (``os.urandom``); the one place tests may swap it."""
    return os.urandom(size)


def _seed(data: bytes) -> int:
    return int.from_bytes(data[:SEED_BYTES], "big")


@dataclass(frozen=True)
class RoundRandomness:
    """The seeds of one round: Poisson sampling, Gaussian noise, dropout; kept out of ``repr``.

    Three independent generators, so that no draw of one (say, how many batches were empty)
    says anything about another.
    """

    source: NoiseSource
    sampling_seed: int = field(repr=False)
    noise_seed: int = field(repr=False)
    dropout_seed: int = field(repr=False)

    @classmethod
    def secret(cls) -> RoundRandomness:
        """Fresh seeds from the OS: what every production round uses."""
        return cls(
            NoiseSource.OS_ENTROPY,
            _seed(os_entropy(SEED_BYTES)),
            _seed(os_entropy(SEED_BYTES)),
            _seed(os_entropy(SEED_BYTES)),
        )

    @classmethod
    def reproducible(cls, seed: int, *, server_round: int) -> RoundRandomness:
        """Seeds derived from an operator's seed and the round: tests and benchmarks only."""

        def derive(purpose: str) -> int:
            text = f"residency.noise-seed.v1\x00{seed}\x00{server_round}\x00{purpose}"
            return _seed(hashlib.sha256(text.encode("ascii")).digest())

        return cls(
            NoiseSource.OPERATOR_SEED, derive("sampling"), derive("noise"), derive("dropout")
        )

    def sampling_generator(self) -> torch.Generator:
        """The Poisson sampler's generator (Opacus draws the masks on the CPU)."""
        return torch.Generator(device="cpu").manual_seed(self.sampling_seed)

    def noise_generator(self, device: torch.device) -> torch.Generator:
        """The Gaussian noise's generator, on the device the gradients live on."""
        return torch.Generator(device=device).manual_seed(self.noise_seed)


def round_randomness(noise_seed: int | None, *, server_round: int) -> RoundRandomness:
    """A round's randomness from the operator's setting: OS entropy unless a seed is set."""
    if noise_seed is None:
        return RoundRandomness.secret()
    return RoundRandomness.reproducible(noise_seed, server_round=server_round)
