"""Whether one long record changes how long a node's encoder pass takes: the timing channel.

A node's round time reaches the coordinator (it sees when the reply comes). If the node cut
each batch to its longest record, one long note among short ones would make its batch, and so
the round, measurably slower: a timing oracle for "is there a long record?". The node runs
private batches at full ``max_length`` width (``common/data/encoding.py::model_inputs``); this
bench measures, in one run, the encoder pass over the demo's notes (D) and over the same notes
plus one maximal-length note (D'), trimmed and at full width, and prints the ratios::

    python bench/timing.py [--model minilm|tiny|PATH] [--examples N] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from residency.common import head_input
from residency.common.config.kinds import UpdateKind
from residency.common.data.demo import (
    DEMO_LABEL_COLUMN,
    DEMO_TEXT_COLUMN,
    write_demo_federation,
)
from residency.common.data.encoding import encode
from residency.common.data.readers import read_labeled_texts
from residency.common.device import pick_compute
from residency.common.head_input import FEATURE_BATCH, encoder_features
from residency.common.model import ModelSpec, build_classifier, load_tokenizer

MAX_LENGTH = 128


def _rows(examples: int) -> tuple[list[str], list[int], tuple[str, ...]]:
    with tempfile.TemporaryDirectory() as folder:
        federation = write_demo_federation(
            Path(folder), countries=("DE",), examples_per_country=examples
        )
        data = read_labeled_texts(
            federation.node_files["DE"],
            text_column=DEMO_TEXT_COLUMN,
            label_column=DEMO_LABEL_COLUMN,
            labels=federation.labels,
        )
    return list(data.texts), list(data.labels), federation.labels


def _seconds(model: torch.nn.Module, data: TensorDataset, *, public: bool, repeats: int) -> float:
    compute = pick_compute()
    times = []
    for _ in range(repeats):
        head_input._kept.clear()  # every pass runs the encoder: no kept features
        started = time.perf_counter()
        encoder_features(model, data, compute=compute, public=public)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--examples", type=int, default=FEATURE_BATCH)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    texts, labels, names = _rows(args.examples)
    spec = ModelSpec(source=args.model, labels=names, update=UpdateKind.HEAD)
    model = build_classifier(spec).eval()
    tokenizer = load_tokenizer(args.model)
    long_note = " ".join(texts[0].split() * 100)  # far past max_length tokens
    d = encode(texts, labels, tokenizer, max_length=MAX_LENGTH)
    d_plus = encode([*texts[:-1], long_note], labels, tokenizer, max_length=MAX_LENGTH)
    widths = d.tensors[1].sum(dim=1)
    print(
        f"{args.model}, {len(texts)} demo notes (one feature batch of {FEATURE_BATCH}), "
        f"median {int(widths.median())} tokens, max {int(widths.max())}; D' swaps one note "
        f"for a {MAX_LENGTH}-token one; median of {args.repeats} passes"
    )
    results = {}
    for public in (True, False):
        for name, data in (("D", d), ("D'", d_plus)):
            results[(public, name)] = _seconds(model, data, public=public, repeats=args.repeats)
    for public, mode in ((True, "trimmed to each batch's longest"), (False, "full width")):
        base, plus = results[(public, "D")], results[(public, "D'")]
        print(f"{mode:>32}: D {base:.3f} s, D' {plus:.3f} s, D'/D {plus / base:.2f}")
    print(f"full width / trimmed on D: {results[(False, 'D')] / results[(True, 'D')]:.2f}")


if __name__ == "__main__":
    main()
