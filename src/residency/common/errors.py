"""Domain exceptions; the CLI maps each to one line and a documented exit code."""

from residency.common.refusal import Refusal


class ConfigError(ValueError):
    """A job or node configuration file is invalid; the message names file, field and fix."""


class DataError(ValueError):
    """A data file cannot be used; the message names file, field and fix."""


class InvalidUpdate(ValueError):
    """A node's reply does not match the expected update (keys, shapes, dtypes, finiteness)."""


class Refused(RuntimeError):
    """The node declined a round before any charge.

    The message is for the node's own log and store; only ``refusal`` (a code and numbers)
    may leave the node.
    """

    def __init__(self, message: str, refusal: Refusal) -> None:
        super().__init__(message)
        self.refusal = refusal


class BudgetExceeded(Refused):
    """Training would spend more privacy budget than the node allows."""


class PolicyViolation(Refused):
    """A round breaks the node operator's own rules (not in the job, delta too large...)."""
