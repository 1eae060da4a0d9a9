"""One country node's ClientApp, driven in-process as a freshly started node would run it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from residency.client.client_app import _confirm, _train
from residency.client.node_config import NODE_CONFIG_KEY
from residency.common import wire
from residency.common.config.job import Job
from residency.common.config.round_plan import NO_WARM_START, round_config
from residency.common.config.signed_job import SignedJob, job_body
from residency.common.data.readers import count_records
from residency.common.model import ModelSpec, base_fingerprint, build_classifier, round_one_arrays
from residency.common.privacy.public_size import rounded_size
from residency.common.privacy.record import PrivacyRecord, SignedRecord, open_record
from residency.common.privacy.signing import Signer
from toy_federation import LABELS


def node_file(
    tmp_path: Path,
    budget: float,
    *,
    country: str = "DE",
    data: str = "job/de.csv",
    state: str = "state",
    extra: str = "",
    name: str = "node.toml",
    public_records: int | None = None,
) -> Path:
    """An operator's node.toml next to ``tmp_path``'s job folder.

    It declares the toy jobs' schema (columns ``text`` and ``label``, labels ``LABELS``)
    unless ``extra`` declares labels itself.
    ``public_records`` defaults to what ``residency node init`` proposes: the data file's
    record count rounded to 2 significant figures.
    """
    path = tmp_path / name
    trust = (
        ""
        if "trusted_launchers" in extra
        else f'trusted_launchers = ["{TEST_LAUNCHER.public_hex}"]\n'
    )
    schema = "" if "labels =" in extra else f"labels = {json.dumps(list(LABELS))}\n"
    if public_records is None:
        public_records = rounded_size(count_records(tmp_path / data))
    path.write_text(
        f'country = "{country}"\ndata = "{data}"\nstate = "{state}"\n'
        f"budget_epsilon = {budget}\ndelta = 1e-4\npublic_records = {public_records}\n"
        f"{trust}{schema}{extra}",
        encoding="utf-8",
    )
    return path


TEST_LAUNCHER = Signer(Ed25519PrivateKey.generate())
"""The launcher every test node trusts (``node_file``) and every test job is signed by."""

_JOB_FIELDS: dict[str, tuple[str, ...]] = {
    "job": ("name",),
    "model": ("model", "path"),
    "max-length": ("model", "max_length"),
    "labels": ("data", "labels"),
    "text-column": ("data", "text_column"),
    "label-column": ("data", "label_column"),
    "target-epsilon": ("privacy", "target_epsilon"),
    "delta": ("privacy", "delta"),
    "max-grad-norm": ("privacy", "max_grad_norm"),
    "accountant": ("privacy", "accountant"),
    "warm-start-share": ("privacy", "warm_start_share"),
    **{
        key: ("train", key.replace("-", "_"))
        for key in (
            "rounds",
            "local-epochs",
            "batch-size",
            "learning-rate",
            "update",
            "warm-start",
            "optimizer",
            "step-rule",
            "transfer-dtype",
            "lora-rank",
            "lora-alpha",
            "lora-targets",
            "seed",
        )
    },
}
"""Round-plan keys and the job field each comes from (the inverse of ``round_config``)."""


TEST_NONCE = "0" * 32
FAR_FUTURE_S = 4_102_444_800  # 2100-01-01: test jobs do not expire unless a test says so


def signed_as(
    job: Job,
    overrides: Mapping[str, Any],
    launcher: Signer,
    *,
    nonce: str = TEST_NONCE,
    expires_unix_s: int = FAR_FUTURE_S,
) -> SignedJob:
    """``job`` with the plan ``overrides`` written into it, signed: a launcher's own choice.

    ``nonce`` names the launch: the same job, overrides and nonce are the same signed job
    (one epsilon account on the node), another nonce is another launch.
    """
    data = json.loads(job_body(job))
    data["launch"] = {"nonce": nonce, "expires_unix_s": expires_unix_s}
    for key, value in overrides.items():
        if key == "countries":
            data["nodes"] = [{"country": c, "data": None} for c in value]
        elif key in _JOB_FIELDS:
            *sections, name = _JOB_FIELDS[key]
            target = data
            for section in sections:
                target = target[section]
            target[name] = None if key == "warm-start" and value == NO_WARM_START else value
    body = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return SignedJob(
        body=body, launcher=launcher.public_hex, signature=launcher.sign(body.encode("ascii"))
    )


def round_message(
    job: Job,
    *,
    server_round: int,
    overrides: Mapping[str, Any] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    launcher: Signer | None = TEST_LAUNCHER,
    resign: bool = True,
    nonce: str = TEST_NONCE,
    expires_unix_s: int = FAR_FUTURE_S,
    message_type: str = "train",
    ttl: float | None = None,
) -> Message:
    """The coordinator's training message for ``job``, optionally tampered with.

    ``overrides`` change the plan; with ``resign`` the launcher signed a job saying the same
    (a legitimate plan), without it the coordinator changed the plan after signing. With no
    ``launcher`` the plan is unsigned.
    """
    model = build_classifier(ModelSpec.from_job(job))
    overrides = dict(overrides or {})
    signed = None
    if launcher is not None:
        signed = signed_as(
            job, overrides if resign else {}, launcher, nonce=nonce, expires_unix_s=expires_unix_s
        )
    config = round_config(job, base_fingerprint=base_fingerprint(model), signed=signed)
    sent = (
        round_one_arrays(model, job.train.round_update(server_round)) if arrays is None else arrays
    )
    return Message(
        RecordDict(
            {
                wire.ARRAYS: ArrayRecord({name: Array(value) for name, value in sent.items()}),
                wire.CONFIG: ConfigRecord({**config, "server-round": server_round, **overrides}),
            }
        ),
        dst_node_id=0,
        message_type=message_type,
        **({} if ttl is None else {"ttl": ttl}),
    )


def train_round(
    job: Job,
    settings: Path,
    *,
    run_id: int,
    server_round: int,
    overrides: Mapping[str, Any] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    launcher: Signer | None = TEST_LAUNCHER,
    resign: bool = True,
    nonce: str | None = None,
    expires_unix_s: int = FAR_FUTURE_S,
    handler: Callable[[Message, Context], Message] = _train,
    ttl: float | None = None,
) -> Message:
    """One training message, handled as by a freshly started node (empty Flower state).

    Unless ``nonce`` is given, each ``run_id`` is its own launch of ``job`` (a launcher
    signing it again), so tests of several runs see several jobs; pass one ``nonce`` to
    replay the same signed job under other runs. ``handler`` is ``_train`` (refusals and
    faults raise) unless a test passes the ClientApp's ``train``, whose reply is what the
    coordinator sees: an update, or a coded error.
    """
    with task_identity(run_id):  # Flower's messages read it, as a ClientApp process has it
        message = round_message(
            job,
            server_round=server_round,
            overrides=overrides,
            arrays=arrays,
            launcher=launcher,
            resign=resign,
            nonce=f"{run_id:032x}" if nonce is None else nonce,
            expires_unix_s=expires_unix_s,
            ttl=ttl,
        )
        return handler(message, node_context(settings, run_id=run_id))


def confirm_round(
    job: Job,
    settings: Path,
    *,
    run_id: int,
    server_round: int = 1,
    overrides: Mapping[str, Any] | None = None,
    nonce: str | None = None,
    handler: Callable[[Message, Context], Message] = _confirm,
) -> Message:
    """The coordinator's confirmation query before ``server_round``, as a fresh node takes it.

    The same plan as :func:`train_round` sends (and the same launch per ``run_id`` unless
    ``nonce`` is given), with no arrays: a query carries no model.
    """
    with task_identity(run_id):
        message = round_message(
            job,
            server_round=server_round,
            overrides=overrides,
            arrays={},
            nonce=f"{run_id:032x}" if nonce is None else nonce,
            message_type="query",
        )
        return handler(message, node_context(settings, run_id=run_id))


def node_context(settings: Path, *, run_id: int) -> Context:
    """The Flower context of a freshly started node whose settings file is ``settings``."""
    return Context(
        run_id=run_id,
        node_id=0,
        node_config={NODE_CONFIG_KEY: str(settings)},
        state=RecordDict(),
        run_config={},
    )


@contextmanager
def task_identity(run_id: int) -> Iterator[None]:
    """Flower's task identity for ``run_id`` while messages are built and handled."""
    saved = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = run_id, 0, 1
    try:
        yield
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


def charge_details(state: Path) -> list[dict[str, Any]]:
    """The detail of every charge entry in the node's own ledger (in ``state``), in order."""
    lines = (state / "ledger.jsonl").read_text("ascii").splitlines()
    entries = [json.loads(line) for line in lines]
    return [entry["detail"] for entry in entries if entry["kind"] == "charge"]


def update_of(reply: Message) -> dict[str, Any]:
    """The arrays a training reply sends, as numpy."""
    return {k: v.numpy() for k, v in reply.content.array_records[wire.ARRAYS].items()}
