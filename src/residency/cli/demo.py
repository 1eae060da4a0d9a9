"""The embedded demo: a synthetic three-country triage federation and its job file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from residency.common.config.job import DEFAULT_PIPELINE, TRAINING_ROUNDS, Job, load_job
from residency.common.config.kinds import UpdateKind
from residency.common.data.demo import write_demo_federation
from residency.common.updates.traits import traits_for

JOB_FILE = "job.toml"


def _train_section(
    pipeline: tuple[UpdateKind, UpdateKind | None], rounds: int | None, seed: int
) -> str:
    """The job's ``[train]`` lines: a pipeline with measured defaults names only itself."""
    update, warm_start = pipeline
    lines = [f'update = "{update.value}"']
    if warm_start is not None:
        lines.append(f'warm_start = "{warm_start.value}"')
        if rounds is not None:
            lines.append(f"rounds = {rounds}")
    elif traits_for(update).is_release:
        lines.append(f"rounds = {1 if rounds is None else rounds}")
    else:  # DP-SGD on the demo's small data: a few short rounds
        lines += [
            f"rounds = {TRAINING_ROUNDS if rounds is None else rounds}",
            "local_epochs = 1",
            "batch_size = 32",
            "learning_rate = 0.005",
        ]
    return "\n".join([*lines, f"seed = {seed}"])


def write_demo_job(
    folder: Path,
    *,
    countries: Sequence[str] = ("DE", "FR", "ES"),
    rounds: int | None = None,
    pipeline: tuple[UpdateKind, UpdateKind | None] = DEFAULT_PIPELINE,
    examples_per_country: int = 400,
    test_examples: int = 600,
    target_epsilon: float = 8.0,
    model: str = "minilm",
    seed: int = 0,
) -> tuple[Job, Path]:
    """Generate the demo data under ``folder`` and a job file that trains on it.

    ``pipeline`` is ``(update, warm_start)``, by default the job's own default; ``rounds``
    defaults to the pipeline's. Half the test notes are held out to choose the kept round
    (``[data] validation_share``), so 600 leave about 300 to report on.
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
{_train_section(pipeline, rounds, seed)}

[privacy]
target_epsilon = {target_epsilon}
delta = 1e-5
max_grad_norm = 1.0
accountant = "prv"
{nodes}"""
    path = folder / JOB_FILE
    path.write_text(text, encoding="utf-8")
    return load_job(path), path
