"""Run a job on Flower's simulation engine: one virtual SuperNode per ``[[nodes]]`` table.

The ServerApp and ClientApp are the same objects a real deployment runs; only the transport
differs. Each virtual node gets its own settings file (country, data path), exactly what a
real node operator writes, so the node code never reads data paths from the job.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from flwr.serverapp import Grid

from residency.client.client_app import app as client_app
from residency.client.node_config import RECORD_KEY, SIMULATION_NODES_ENV
from residency.common.config.job import BUILTIN_MODELS, Job
from residency.common.config.signed_job import sign_job
from residency.common.data.readers import (
    count_people,
    count_records,
    read_labeled_texts,
)
from residency.common.errors import DataError
from residency.common.files import write_atomic
from residency.common.privacy.public_size import rounded_size
from residency.common.privacy.signing import load_or_create_signer, public_path
from residency.common.privacy.unit import DEFAULT_RECORDS_PER_PERSON, PrivacyUnit
from residency.server.federation import FederationObserver, JobFailed, RunControl
from residency.server.results import Results
from residency.server.simulated_app import make_server_app
from residency.server.tracking import local_uri, require_mlflow

NODES_DIR = "nodes"
LEDGER_DIR = "ledger"
KEYS_DIR = "keys"
COORDINATOR_KEY = "coordinator.key"
LAUNCHER_KEY = "launcher.key"
STOP_WAIT_S = 60.0
"""How long Ctrl-C waits for the run's thread to write its end (one poll, a file, a ledger)."""


def check_node_data(job: Job) -> dict[str, int]:
    """Validate every country's file before anything starts; returns examples per country."""
    sizes: dict[str, int] = {}
    for node in job.nodes:
        if node.data is None:
            raise DataError(f"node {node.country}: no data file in the job")
        try:
            records = read_labeled_texts(
                node.data,
                text_column=job.data.text_column,
                label_column=job.data.label_column,
                labels=job.data.labels,
            )
        except DataError as exc:
            raise DataError(f"node {node.country}: {exc}") from exc
        sizes[node.country] = len(records)
    return sizes


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid TOML basic string


def write_node_settings(job: Job, out_dir: Path, *, launcher: str) -> Path:
    """One settings file per virtual node, as its operator would write it.

    Each trusts ``launcher``, the simulation's own launcher key, as an operator lists the
    keys of the people allowed to launch jobs on its data, declares the job's ``[data]``
    schema as its own (in a simulation the operator and the launcher are one person), and
    declares the public size ``residency node init`` would propose (the record count to 2
    significant figures) unless the job's ``[[nodes]]`` table sets one.
    """
    folder = out_dir / NODES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for index, node in enumerate(job.nodes):
        if node.data is None:
            raise DataError(f"node {node.country}: no data file in the job")
        public = node.public_records or rounded_size(count_records(node.data))
        text = (
            f"country = {_toml_string(node.country)}\n"
            f"data = {_toml_string(str(node.data.resolve()))}\n"
            f"text_column = {_toml_string(job.data.text_column)}\n"
            f"label_column = {_toml_string(job.data.label_column)}\n"
            f"labels = [{', '.join(_toml_string(label) for label in job.data.labels)}]\n"
            f"public_records = {public}\n"
            f"budget_epsilon = {job.privacy.target_epsilon!r}\n"
            f"delta = {job.privacy.delta!r}\n"
            f"state = {_toml_string(str((folder / f'{node.country}-state').resolve()))}\n"
            f"log = {_toml_string(str((folder / f'{node.country}.log').resolve()))}\n"
            f"trusted_launchers = [{_toml_string(launcher)}]\n"
        )
        if job.model.path not in BUILTIN_MODELS:  # the job's checkpoint, as an operator lists it
            text += f"models = [{_toml_string(job.model.path)}]\n"
        text += _person_settings(job, node.country, index)
        tomllib.loads(text)  # never write a file the node cannot read
        (folder / f"{index}.toml").write_text(text, encoding="utf-8")
    return folder


def _person_settings(job: Job, country: str, index: int) -> str:
    """node.toml's privacy-unit lines for a node the job's ``[[nodes]]`` makes person-level.

    ``public_people`` defaults, as ``public_records`` does, to the data's count (of people)
    rounded to 2 significant figures.
    """
    node = job.nodes[index]
    if node.privacy_unit is not PrivacyUnit.PERSON:
        return ""
    if node.person_column is None or node.data is None:
        raise DataError(
            f'job: nodes[{index}] ({country}): privacy_unit = "person" needs person_column '
            "and data; fix: add them to the node's [[nodes]] table"
        )
    cap = node.records_per_person or DEFAULT_RECORDS_PER_PERSON
    people = node.public_people
    if people is None:
        people = rounded_size(
            count_people(
                node.data,
                text_column=job.data.text_column,
                label_column=job.data.label_column,
                labels=job.data.labels,
                person_column=node.person_column,
            )
        )
    return (
        'privacy_unit = "person"\n'
        f"person_column = {_toml_string(node.person_column)}\n"
        f"records_per_person = {cap}\n"
        f"public_people = {people}\n"
    )


def create_keys(job: Job, out_dir: Path) -> tuple[Path, Path]:
    """Signing keys for the simulated coordinator and nodes; public halves in ``OUT/keys/``.

    In a deployment each party makes its own key and hands its public half to auditors; in a
    simulation one machine plays every party, so it lays out the auditor's key folder itself.
    """
    keys = out_dir / KEYS_DIR
    keys.mkdir(parents=True, exist_ok=True)
    coordinator = out_dir / NODES_DIR / COORDINATOR_KEY
    load_or_create_signer(coordinator, comment="residency-coordinator-ledger")
    write_atomic(keys / "coordinator.pub", public_path(coordinator).read_bytes())
    for node in job.nodes:
        private = out_dir / NODES_DIR / f"{node.country}-state" / RECORD_KEY
        load_or_create_signer(private, comment=f"residency-record-{node.country}")
        write_atomic(keys / f"{node.country}.pub", public_path(private).read_bytes())
    return out_dir / LEDGER_DIR, coordinator


def backend_config(nodes: int) -> dict[str, Any]:
    """Ray resources: one CPU per virtual node; a GPU share per node when CUDA is present."""
    cpus = os.cpu_count() or 1
    gpus = 1.0 / nodes if torch.cuda.is_available() else 0.0
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": gpus},
        "init_args": {
            "num_cpus": cpus,
            "num_gpus": 1 if gpus else 0,
            "logging_level": "ERROR",
            "log_to_driver": False,
            "include_dashboard": False,
        },
    }


def _stopped(control: RunControl) -> None:
    """Let the ServerApp write "stopped" into results.json and the ledger before we exit."""
    control.stop.set()
    control.ended.wait(timeout=STOP_WAIT_S)


def simulate(
    job: Job,
    job_path: Path,
    *,
    out_dir: Path,
    observer: FederationObserver | None = None,
    wrap_grid: Callable[[Grid], Grid] | None = None,
) -> Results:
    """Validate inputs, then run the whole job in simulation and return its results."""
    from flwr.simulation import run_simulation

    job.require_nodes(job_path)
    check_node_data(job)
    tracking_uri = None
    if job.tracking is not None:
        require_mlflow(str(job_path))
        tracking_uri = job.tracking.uri or local_uri(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / NODES_DIR).mkdir(parents=True, exist_ok=True)
    launcher = load_or_create_signer(out_dir / NODES_DIR / LAUNCHER_KEY, comment="launcher")
    settings = write_node_settings(job, out_dir, launcher=launcher.public_hex)
    os.environ[SIMULATION_NODES_ENV] = str(settings.resolve())
    ledger = create_keys(job, out_dir)
    sink: list[Results] = []
    control = RunControl()
    server_app = make_server_app(
        job,
        out_dir=out_dir,
        observer=observer,
        sink=sink,
        wrap_grid=wrap_grid,
        ledger=ledger,
        signed=sign_job(job, launcher),
        control=control,
        tracking_uri=tracking_uri,
    )
    previous = None
    interrupted = threading.Event()
    if threading.current_thread() is threading.main_thread():

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            # The first Ctrl-C asks the run to stop: its thread writes "stopped" while Flower's
            # nodes and Ray still answer, then Flower ends as after a last round. Tearing the
            # backend down under the run raced Ray's own exit (status 1, not 130). A second
            # Ctrl-C tears the engine down at once, as the first one used to.
            if interrupted.is_set():
                raise KeyboardInterrupt
            interrupted.set()
            control.stop.set()

        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(job.nodes),
            backend_config=backend_config(len(job.nodes)),
        )
    except BaseException as exc:
        # Flower and Ray clean up in `finally` blocks that can raise over the interrupt (Ray's
        # shutdown, the backend crashing as it goes): Ctrl-C stays the outcome either way.
        if not (interrupted.is_set() or isinstance(exc, KeyboardInterrupt)):
            raise
        _stopped(control)
        raise KeyboardInterrupt from exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():  # Flower swallowed the interrupt; the job still ended by Ctrl-C
        _stopped(control)
        raise KeyboardInterrupt
    if not sink:
        raise JobFailed(f"the simulation ended without results; see {out_dir / 'residency.log'}")
    return sink[0]
