"""What a canary audit runs and reports, apart from the torch code that runs it.

The command line validates its flags with these models without importing torch or Opacus.
"""

from __future__ import annotations

import math
import warnings
from typing import Annotated

from pydantic import Field, field_validator

from residency.common.config.job import Strict
from residency.common.config.kinds import AccountantKind

DEFAULT_CANARIES = 25_000
DEFAULT_CONFIDENCE = 0.95
MIN_CANARIES = 100


class Mechanism(Strict):
    """The DP-SGD configuration of a node: what the audit runs and what it checks."""

    noise_multiplier: Annotated[float, Field(ge=0, le=1000)]
    max_grad_norm: Annotated[float, Field(gt=0, le=1e6)] = 1.0
    sample_rate: Annotated[float, Field(gt=0, le=1)]
    steps: Annotated[int, Field(ge=1, le=10_000_000)]
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    accountant: AccountantKind = AccountantKind.PRV
    records_per_person: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Person-level DP: each canary is a person with this many records (the node's cap)."""

    @field_validator("sample_rate")
    @classmethod
    def _one_over_batches(cls, value: float) -> float:
        batches = round(1 / value)
        if abs(batches * value - 1) > 1e-6:
            below, above = max(math.floor(1 / value), 1), math.ceil(1 / value)
            raise ValueError(
                f"{value:g} is not 1/k for a whole number of batches k (Opacus samples at "
                f"1/len(loader)); nearest: {1 / below:.12g} (1/{below}), "
                f"{1 / above:.12g} (1/{above})"
            )
        return 1 / batches

    def opacus_epsilon(self) -> float:
        """Epsilon Opacus' accountant gives these steps at ``delta``; inf when it has none."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                from residency.common.privacy.accountant import epsilon_spent

                return epsilon_spent(
                    ((self.noise_multiplier, self.sample_rate, self.steps),),
                    delta=self.delta,
                    kind=self.accountant,
                )
            except (OverflowError, ValueError, ZeroDivisionError):
                return math.inf


class CanarySettings(Strict):
    """How the audit is run: canaries, confidence, seed and the epsilon to check."""

    canaries: Annotated[int, Field(ge=MIN_CANARIES, le=10_000_000)] = DEFAULT_CANARIES
    confidence: Annotated[float, Field(gt=0, lt=1)] = DEFAULT_CONFIDENCE
    seed: Annotated[int, Field(ge=0)] = 0
    claimed_epsilon: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


class CanaryAudit(Strict):
    """What one audit found; ``flagged`` means the configuration's claim is refuted."""

    mechanism: Mechanism
    claimed_epsilon: float
    canaries: int
    included: int
    runs: int
    canaries_per_run: int
    guess_in_fraction: float
    guess_out_fraction: float
    guesses: int
    correct: int
    epsilon_lower_bound: float
    epsilon_ceiling: float
    confidence: float
    flagged: bool
    seed: int
    elapsed_s: float
