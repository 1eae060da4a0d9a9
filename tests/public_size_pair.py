"""D and D plus one record under one declared public size: the toy job and its two nodes.

The unit tier checks refusals and sampling on the pair (``tests/unit/test_public_size.py``),
the node tier a whole round over it (``tests/node/test_public_size_round.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from node_harness import node_file
from residency.common.data.readers import count_records
from toy_federation import write_toy_job

EXAMPLES = 60


def d_and_d_plus_one(tmp_path: Path, *, train: str = 'update = "head"') -> Path:
    """A toy job whose DE file has ``EXAMPLES`` rows, and a copy of that file with one more."""
    job = write_toy_job(
        tmp_path / "job", countries=("DE",), rounds=1, examples=EXAMPLES, train=train
    )
    plus = tmp_path / "job" / "de-plus-one.csv"
    shutil.copy(tmp_path / "job" / "de.csv", plus)
    with plus.open("a", encoding="utf-8") as handle:
        handle.write("one more record about good things,pos\n")
    assert count_records(plus) == count_records(tmp_path / "job" / "de.csv") + 1
    return job


def node_pair(tmp_path: Path, public_records: int, extra: str = "") -> tuple[Path, Path]:
    """The node.toml of a node on D and of one on D plus one, both declaring ``public_records``."""
    return (
        node_file(
            tmp_path, 100.0, state="d", name="d.toml", public_records=public_records, extra=extra
        ),
        node_file(
            tmp_path,
            100.0,
            data="job/de-plus-one.csv",
            state="d1",
            name="d1.toml",
            public_records=public_records,
            extra=extra,
        ),
    )
