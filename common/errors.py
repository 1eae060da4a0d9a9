"""Domain exceptions; the CLI maps each to one line and a documented exit code."""


class ConfigError(ValueError):
    """A job or node configuration file is invalid; the message names file, field and fix."""


class DataError(ValueError):
    """A data file cannot be used; the message names file, field and fix."""


class InvalidUpdate(ValueError):
    """A node's reply does not match the expected update (keys, shapes, dtypes, finiteness)."""


class BudgetExceeded(RuntimeError):
    """Training would spend more privacy budget than the node allows."""


class PolicyViolation(RuntimeError):
    """A round breaks the node operator's own rules (not in the job, delta too large...)."""
