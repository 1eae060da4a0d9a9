"""The hash of a model update, over its numbers rather than any one serialisation of them.

A node signs this hash in its privacy record; the coordinator recomputes it from what arrived
and from the update file it keeps, so the auditor can tie each ledger entry to the exact
arrays that were averaged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np


def update_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over each array's name, dtype, shape and C-order bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        header = f"{name}\0{array.dtype.str}\0{','.join(map(str, array.shape))}\0"
        digest.update(header.encode("utf-8"))
        digest.update(array.tobytes())
    return digest.hexdigest()
