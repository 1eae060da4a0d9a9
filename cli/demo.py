"""The embedded demo: a synthetic three-country triage federation and its job file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from residency.common.config.job import Job, UpdateKind, load_job
from residency.common.data.demo import write_demo_federation
from residency.common.updates import method_for

JOB_FILE = "job.toml"
DEMO_UPDATE = UpdateKind.PROTOTYPES
"""What the demo trains: the class-mean release, the best of every kind on the demo's data
at epsilon 8 (docs/performance.md, ``bench/accuracy.py``), in seconds."""
TRAINING_ROUNDS = 3
"""Rounds of a DP-SGD demo (a release has one)."""


def default_rounds(update: UpdateKind) -> int:
    """One for a one-shot release, :data:`TRAINING_ROUNDS` for DP-SGD."""
    return 1 if method_for(update).release_sensitivity is not None else TRAINING_ROUNDS


def write_demo_job(
    folder: Path,
    *,
    countries: Sequence[str] = ("DE", "FR", "ES"),
    rounds: int | None = None,
    update: UpdateKind = DEMO_UPDATE,
    examples_per_country: int = 400,
    test_examples: int = 300,
    target_epsilon: float = 8.0,
    model: str = "minilm",
    seed: int = 0,
) -> tuple[Job, Path]:
    """Generate the demo data under ``folder`` and a job file that trains on it.

    ``rounds`` defaults to :func:`default_rounds` of ``update``.
    """
    federation = write_demo_federation(
        folder,
        countries=countries,
        examples_per_country=examples_per_country,
        test_examples=test_examples,
        seed=seed,
    )
    q = json.dumps  # JSON string literals are valid TOML strings
    nodes = "".join(
        f"\n[[nodes]]\ncountry = {q(country)}\ndata = {q(path.name)}\n"
        for country, path in federation.node_files.items()
    )
    labels = ", ".join(q(label) for label in federation.labels)
    text = f"""# Residency demo: synthetic triage notes -> medical specialty (not real data).
name = "triage-demo"

[model]
path = {q(model)}
max_length = 64

[data]
text_column = "text"
label_column = "label"
labels = [{labels}]
test = {q(federation.test_file.name)}

[train]
rounds = {default_rounds(update) if rounds is None else rounds}
local_epochs = 1
batch_size = 32
learning_rate = 0.005
update = {q(update.value)}
seed = {seed}

[privacy]
target_epsilon = {target_epsilon}
delta = 1e-5
max_grad_norm = 1.0
accountant = "prv"
{nodes}"""
    path = folder / JOB_FILE
    path.write_text(text, encoding="utf-8")
    return load_job(path), path
