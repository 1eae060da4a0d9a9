"""The update kinds a job may choose, one module each, and the registry that finds them.

Adding a kind: write its module (what it trains, its clipping mode, whether float16 transfer
is sound, how the coordinator combines it) and add its ``METHOD`` to ``_METHODS`` below.
"""

from __future__ import annotations

from residency.common.config.job import UpdateKind
from residency.common.updates import full, head, lora, lora_fa, prototypes
from residency.common.updates.base import Combine, GradSampleMode, UpdateMethod

__all__ = ["Combine", "GradSampleMode", "UpdateMethod", "method_for"]

_METHODS: dict[UpdateKind, UpdateMethod] = {
    method.kind: method
    for method in (lora.METHOD, lora_fa.METHOD, head.METHOD, full.METHOD, prototypes.METHOD)
}


def method_for(kind: UpdateKind) -> UpdateMethod:
    """The module that defines ``kind``; every ``UpdateKind`` has one."""
    return _METHODS[kind]
