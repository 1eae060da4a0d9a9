"""Each update kind's code (:class:`~.base.UpdateMethod`), found by its ``UpdateKind``.

Adding a kind: its traits in :mod:`.traits`, its module, and its ``METHOD`` below.
"""

from __future__ import annotations

from residency.common.config.kinds import UpdateKind
from residency.common.updates import full, head, lora, lora_fa, prototypes
from residency.common.updates.base import UpdateMethod

_METHODS: dict[UpdateKind, UpdateMethod] = {
    method.traits.kind: method
    for method in (lora.METHOD, lora_fa.METHOD, head.METHOD, full.METHOD, prototypes.METHOD)
}


def method_for(kind: UpdateKind) -> UpdateMethod:
    """The code that makes a classifier train ``kind``; every ``UpdateKind`` has it."""
    return _METHODS[kind]
