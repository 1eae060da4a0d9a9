"""Small, easily separable federations the tiny BERT can learn in seconds."""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from residency.common.config.job import VALIDATION_SHARE
from residency.server.held_out import split_rows

WORDS = {
    "pos": ["good", "great", "fine", "happy", "nice", "lovely"],
    "neg": ["bad", "awful", "terrible", "sad", "poor", "ugly"],
    "obj": ["table", "chair", "window", "door", "wall", "floor"],
}
LABELS = tuple(WORDS)
LEARNABLE = 600
"""Rows per country with which a toy job learns under DP noise from fresh OS entropy every
run: measured on LoRA-FA, 3 rounds, 2 countries, final accuracy 0.74-0.90 over 4 runs, where
150 rows gave 0.33-0.50. Tests that assert learning use it; others keep the faster default."""
WIDTH = 32
"""The tiny BERT's hidden size: the width of its features, class sums and feature transform."""


_SCHEDULE = """rounds = {rounds}
local_epochs = 2
batch_size = 16
learning_rate = 0.1"""


def write_rows(path: Path, rows: Sequence[tuple[str, str]]) -> Path:
    """Write ``text,label`` rows as CSV."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


TEST_FILE = "test.csv"
"""The test set every toy job names; deployed, it is read in the coordinator's data folder."""


def write_test_set(path: Path) -> Path:
    """The toy jobs' shared test set: 90 rows, the same in every job."""
    return write_rows(path, separable_rows(90, 99))


def separable_rows(count: int, seed: int, canary: str | None = None) -> list[tuple[str, str]]:
    """``count`` rows whose label is given away by its words; optionally plant ``canary``."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = LABELS[i % len(LABELS)]
        text = " ".join(rng.choices(WORDS[label], k=5))
        if canary is not None and i % 10 == 0:
            text = f"{text} {canary}"
        rows.append((text, label))
    return rows


def write_toy_job(
    folder: Path,
    *,
    countries: Sequence[str] = ("DE", "FR", "ES"),
    examples: int = 150,
    rounds: int = 2,
    canaries: bool = False,
    extra: str = "",
    train: str = "",
    model: str = "tiny",
    schedule: bool = True,
    data: str = "",
    privacy: str = "",
) -> Path:
    """A tiny-BERT job (LoRA unless ``train`` says) over separable per-country data.

    ``schedule=False`` leaves rounds, epochs, batch and learning rate to the pipeline's
    defaults, as a user who writes none of them gets.
    """
    folder.mkdir(parents=True, exist_ok=True)
    nodes = []
    for index, country in enumerate(countries):
        canary = f"zqxcanary{country}{index}wvk" if canaries else None
        write_rows(folder / f"{country.lower()}.csv", separable_rows(examples, index, canary))
        nodes.append(f'[[nodes]]\ncountry = "{country}"\ndata = "{country.lower()}.csv"\n')
    write_test_set(folder / TEST_FILE)
    job = folder / "job.toml"
    job.write_text(
        f"""name = "toy"
{extra}
[model]
path = "{model}"
max_length = 16

[data]
labels = ["pos", "neg", "obj"]
test = "{TEST_FILE}"
{data}
[train]
{_SCHEDULE.format(rounds=rounds) if schedule else ""}
{train if "update" in train else 'update = "lora"' + chr(10) + train}

[privacy]
target_epsilon = 8.0
delta = 1e-4
accountant = "prv"
{privacy}
"""
        + "\n".join(nodes),
        encoding="utf-8",
    )
    return job


def exported_accuracy(
    model_dir: Path, test_file: Path, *, validation_share: float = VALIDATION_SHARE
) -> tuple[float, Any]:
    """(accuracy, model) of an exported checkpoint on a toy test file, loaded as a user would.

    Plain ``transformers`` with ``trust_remote_code``: no Residency code scores it. Only the
    rows the coordinator reports on count (the held-out part only chooses).
    """
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from residency.common.data.readers import read_labeled_texts

    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, trust_remote_code=True
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    test = read_labeled_texts(test_file, text_column="text", label_column="label", labels=LABELS)
    held = split_rows(test.texts, validation_share)
    texts = [text for text, out in zip(test.texts, held, strict=True) if not out]
    labels = [label for label, out in zip(test.labels, held, strict=True) if not out]
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
        predicted = model(**batch).logits.argmax(-1).numpy()
    return float(np.mean(predicted == np.array(labels))), model
