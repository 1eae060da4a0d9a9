"""A bench's temp folder: removed afterwards, kept when asked or when the run failed."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def workspace(keep: bool, *, prefix: str = "residency-bench-") -> Iterator[Path]:
    """A temp folder, removed afterwards unless ``keep`` or something failed."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    except BaseException:
        print(f"kept {root} for inspection", file=sys.stderr)
        raise
    if keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
