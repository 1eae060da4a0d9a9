"""The coordinator's sentence for a node's error reply: built from codes, never from its text.

An error reply's reason is free text written on the node. Shown as sent (on the console, in
``results.json``, in the coordinator's ledger) it would be a channel out of the country, so a
refusal is decoded and rendered from its code and numbers (:mod:`residency.common.refusal`), a
fault is shown only as the one fixed sentence the wire contract allows, and any other error by
its code alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from flwr.common.constant import ErrorCode

from residency.common import wire
from residency.common.refusal import describe

_FLOWER_ERRORS: Final[Mapping[int, str]] = {
    value: name.lower().replace("_", " ")
    for name, value in vars(ErrorCode).items()
    if name.isupper() and isinstance(value, int)
}
"""Flower's own error codes by name (``client app crashed``, ``node unavailable``...)."""


def error_sentence(code: int, reason: str, *, country: str, server_round: int) -> str:
    """What the coordinator shows for an error reply from ``country`` in ``server_round``."""
    if code == wire.REFUSED:
        return describe(reason, country=country, server_round=server_round)
    if code == wire.NODE_FAULT:
        said = reason if reason in wire.FIXED_REASONS else "node error (reason not readable)"
        return f"{country} failed round {server_round}: {said}"
    name = _FLOWER_ERRORS.get(code, "not a Residency or Flower code")
    return f"{country} failed round {server_round}: error code {code} ({name})"


def timeout_sentence(country: str, server_round: int, waited_s: float) -> str:
    """What the coordinator shows for a node whose reply had not come when the round closed.

    ``waited_s`` is how long the round really waited for it (its deadline, measured).
    """
    shown = f"{waited_s:.1f}" if waited_s < 10 else f"{waited_s:.0f}"
    return f"{country} sent no reply to round {server_round} within {shown} s"
