"""What leaves with a reply is public or noised: no figure read off the round's training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node_harness import node_file, signed_record, train_round
from residency.client import client_app as node_app
from residency.client import reply as node_reply
from residency.common.config.job import load_job
from toy_federation import write_toy_job

pytestmark = pytest.mark.node


def test_the_record_is_timed_before_training_never_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A time taken after training tells the coordinator how long the data took to train."""
    job = load_job(
        write_toy_job(tmp_path / "job", countries=("DE",), rounds=1, examples=40, train="")
    )
    phase = {"trained": False}
    times = {False: "2026-01-01T00:00:00+00:00", True: "2026-01-01T09:59:59+00:00"}
    monkeypatch.setattr(node_reply, "now", lambda: times[phase["trained"]])
    real = node_app.train_dp_round

    def training(*args: Any, **kwargs: Any) -> Any:
        phase["trained"] = True
        return real(*args, **kwargs)

    monkeypatch.setattr(node_app, "train_dp_round", training)
    record = signed_record(train_round(job, node_file(tmp_path, 100.0), run_id=1, server_round=1))
    assert phase["trained"]
    assert record.signed_at == times[False]


@pytest.mark.parametrize("update", ["head", "lora"])
def test_a_node_runs_every_private_batch_at_full_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, update: str
) -> None:
    """Trimmed to its longest record, a batch's time would say how long that record is."""
    from residency.common.data import encoding

    job = load_job(
        write_toy_job(
            tmp_path / "job", countries=("DE",), rounds=1, examples=40, train=f'update = "{update}"'
        )
    )
    widths: list[int] = []
    real = encoding.bert_inputs

    def recorded(input_ids: Any, attention_mask: Any) -> Any:
        widths.append(int(input_ids.shape[1]))
        return real(input_ids, attention_mask)

    monkeypatch.setattr(encoding, "bert_inputs", recorded)
    reply = train_round(job, node_file(tmp_path, 100.0), run_id=1, server_round=1)
    assert not reply.has_error()
    assert widths  # the encoder ran on the node's records
    assert set(widths) == {job.model.max_length}  # the toy notes are far shorter


def test_the_signed_batch_count_is_the_steps_never_how_many_were_empty(tmp_path: Path) -> None:
    """How many Poisson batches came out empty depends on the record count: never signed."""
    job = load_job(
        write_toy_job(
            tmp_path / "job", countries=("DE",), rounds=1, examples=40, train='update = "head"'
        )
    )
    reply = train_round(
        job, node_file(tmp_path, 100.0), run_id=1, server_round=1, overrides={"batch-size": 1}
    )
    record = signed_record(reply)  # q = 1/40: about a third of the 80 batches are empty
    assert record.mechanism is not None
    assert record.mechanism.batches == record.mechanism.clipped_batches == record.steps == 80
