"""One country node's ClientApp, driven in-process as a freshly started node would run it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from residency.client.app import _train
from residency.client.node_config import NODE_CONFIG_KEY
from residency.common import wire
from residency.common.config.job import Job
from residency.common.config.round_plan import round_config
from residency.common.model import ModelSpec, base_fingerprint, build_classifier, round_one_arrays
from residency.common.privacy.record import PrivacyRecord, SignedRecord, open_record


def node_file(
    tmp_path: Path,
    budget: float,
    *,
    country: str = "DE",
    data: str = "job/de.csv",
    state: str = "state",
    extra: str = "",
    name: str = "node.toml",
) -> Path:
    """An operator's node.toml next to ``tmp_path``'s job folder."""
    path = tmp_path / name
    path.write_text(
        f'country = "{country}"\ndata = "{data}"\nstate = "{state}"\n'
        f"budget_epsilon = {budget}\ndelta = 1e-4\n{extra}",
        encoding="utf-8",
    )
    return path


def round_message(
    job: Job,
    *,
    server_round: int,
    overrides: Mapping[str, Any] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> Message:
    """The coordinator's training message for ``job``, optionally tampered with."""
    model = build_classifier(ModelSpec.from_job(job))
    config = round_config(job, base_fingerprint=base_fingerprint(model))
    sent = (
        round_one_arrays(model, job.train.round_update(server_round)) if arrays is None else arrays
    )
    return Message(
        RecordDict(
            {
                wire.ARRAYS: ArrayRecord({name: Array(value) for name, value in sent.items()}),
                wire.CONFIG: ConfigRecord(
                    {**config, "server-round": server_round, **(overrides or {})}
                ),
            }
        ),
        dst_node_id=0,
        message_type="train",
    )


def train_round(
    job: Job,
    settings: Path,
    *,
    run_id: int,
    server_round: int,
    overrides: Mapping[str, Any] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> Message:
    """One training message, handled as by a freshly started node (empty Flower state)."""
    context = Context(
        run_id=run_id,
        node_id=0,
        node_config={NODE_CONFIG_KEY: str(settings)},
        state=RecordDict(),
        run_config={},
    )
    saved = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = run_id, 0, 1
    try:  # Flower's messages read the task's identity, as a ClientApp process has it
        message = round_message(job, server_round=server_round, overrides=overrides, arrays=arrays)
        return _train(message, context)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def signed_record(reply: Message) -> PrivacyRecord:
    """The privacy record a training reply carries, opened and checked."""
    record = reply.content.config_records[wire.RECORD]
    return open_record(
        SignedRecord(
            body=str(record[wire.RECORD_BODY]), signature=str(record[wire.RECORD_SIGNATURE])
        )
    )


def update_of(reply: Message) -> dict[str, Any]:
    """The arrays a training reply sends, as numpy."""
    return {k: v.numpy() for k, v in reply.content.array_records[wire.ARRAYS].items()}
