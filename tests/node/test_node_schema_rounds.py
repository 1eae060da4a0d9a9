"""The data's schema is the operator's: one unusable record changes no round's outcome.

The reproduced oracle through whole rounds (seconds each): the same job against D and against
D plus one record with a label outside the job's set, or a blank or empty text, gives the same
reply and the same charge. How the schema is declared and read is checked in
``tests/unit/test_node_schema.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Message

from node_harness import train_round
from residency.client.client_app import train
from schema_node import charges_of, node_with_rows


def _seen(reply: Message) -> tuple[str, ...]:
    """What the coordinator sees of a reply, less the noised update: its kind and code."""
    if not reply.has_error():
        return ("reply",)
    return ("error", str(reply.error.code), str(reply.error.reason))


@pytest.mark.node
@pytest.mark.parametrize(
    "unusable",
    [
        pytest.param(("good fine happy", "zzz"), id="label-outside-the-set"),
        pytest.param(("   ", "pos"), id="blank-text"),
        pytest.param(("", "neg"), id="empty-text"),
    ],
)
def test_one_unusable_record_changes_no_outcome_and_no_charge(
    tmp_path: Path, unusable: tuple[str, str]
) -> None:
    """The reproduced oracle: the same job against D and D plus one unusable record."""
    seen, charged = [], []
    for name, extra in (("without", ()), ("with", (unusable,))):
        job, settings = node_with_rows(tmp_path / name, *extra)
        reply = train_round(job, settings, run_id=1, server_round=1, handler=train)
        seen.append(_seen(reply))
        charged.append(charges_of(tmp_path / name))
    assert seen[0] == seen[1] == ("reply",)
    assert charged[0] == charged[1]
    assert len(charged[0]) == 1
