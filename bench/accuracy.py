"""Global test accuracy of what ``residency simulate`` trains, at epsilon 1, 3 and 8.

The data is the demo's synthetic triage notes (one language per country), re-drawn so each
country's labels follow its own Dirichlet(alpha) mix: label skew, as real institutions have.
Every DP row is the product itself: a job file run by ``residency simulate`` (the ServerApp and
one ClientApp per country on Flower's simulation engine, noise from each node's OS entropy),
scored on one mixed-language test set:

- federated: every country in one job;
- local-only: each country alone, in a job of its own (the federation must beat each);
- central: one party holding every country's rows, at the same epsilon.

Each DP row runs ``--repeats`` times (fresh noise each time); the table shows the mean and the
JSON keeps every run. ``--updates`` lists the pipelines to compare, each an update kind or a
warm start and the kind it starts (``prototypes+head``: the release, then DP-SGD on the head);
the first is the one the targets are checked on (default: the job's default pipeline).
A warm-started pipeline runs with the job's own defaults for it; other training pipelines with
the ``--rounds``, ``--batch-size``... options.

The non-private references are computed in-process on the very features the product's
classifier head reads (the frozen encoder's normalised mean): the class-mean classifier from
exact statistics (what ``prototypes`` would give without noise), a linear probe trained
federated (FedAvg of full-batch softmax regression) and centrally (scikit-learn's logistic
regression), and the majority class. They separate what the features allow from what DP
costs. A fifth, central LoRA fine-tuning of the product's own model without noise (AdamW on
the pooled training rows; by default on a corpus only), says what training the encoder adds.

``--corpus NAME`` replaces the demo notes with a real public corpus (``bench/corpora.py``):
a stratified test set is held out, and the rest is split across ``--countries`` by the standard
per-class Dirichlet(``--alpha``) label skew, or, with ``--regime language``, one country per
language of a multilingual corpus. ``--references-only`` prints the non-private rows alone.
Usage::

    python bench/accuracy.py [--model minilm|tiny|PATH] [--examples N] [--repeats R]
    python bench/accuracy.py --corpus bbc-news --countries DE,FR,ES,IT [--references-only]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tomli_w
import torch
from corpora import CORPORA, Corpus, CorpusError, load
from people import deal
from sklearn.linear_model import LogisticRegression
from torch.utils.data import DataLoader

from residency.cli.demo import write_demo_job
from residency.cli.run_log import quiet_libraries
from residency.client.linear_probe import head_features
from residency.common.classifier_head import classifier_head
from residency.common.config.job import (
    DEFAULT_PIPELINE,
    PIPELINE_JOIN,
    VALIDATION_SHARE,
    load_job,
    parse_pipeline,
    pipeline_name,
)
from residency.common.config.kinds import UpdateKind
from residency.common.data.encoding import bert_inputs, encode, trim
from residency.common.data.readers import read_labeled_texts
from residency.common.device import pick_compute
from residency.common.evaluation import predict
from residency.common.files import write_atomic
from residency.common.model import ModelSpec, build_classifier, load_tokenizer
from residency.common.updates import prototypes
from residency.common.updates.traits import traits_for
from residency.server.held_out import split_rows
from residency.server.results import Results, RoundResult

RESIDENCY = str(Path(sys.executable).parent / "residency")
NO_DP = math.inf
REGIMES = ("federated", "local", "central")
PERSON_COLUMN = "person"
OWN_LABEL = 0.8
"""Under ``--people``, the share of a person's records of their dominant label (a patient's
notes share a diagnosis); ``bench/person_level.py``'s default."""
DEFAULT_CAP = 10
"""``--units person``'s records kept per person: the best caps measured by
``bench/person_level.py`` were 5 to 10."""
CENTRAL_COUNTRY = "AQ"
"""The one party of a central row (holding every country's rows). Jobs take ISO 3166-1 codes
only; Antarctica's stands in for "all of them", and a federation may not use it."""


DEFAULT_PIPELINE_NAME = pipeline_name(*DEFAULT_PIPELINE)


def target_points(examples: int) -> dict[float, float]:
    """Points the default pipeline may trail the best non-private federated reference by.

    The issue's targets, per epsilon; tighter with more data.
    """
    return {8.0: 2.0 if examples >= 2000 else 3.0, 3.0: 8.0}


@dataclass(frozen=True)
class Settings:
    """The DP-SGD settings of training pipelines (a release ignores them)."""

    model: str
    rounds: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    max_grad_norm: float
    delta: float
    max_length: int
    overrides: tuple[Override, ...] = ()  # from --set
    public_records: str = "rounded"  # each node's declared size: see public_size()


def public_size(records: int, choice: str) -> int | None:
    """A node's declared public size for ``--public-records`` (None: simulate's own default).

    ``rounded`` is what ``residency simulate`` and ``node init`` propose (the count to 2
    significant figures), ``exact`` the count itself, a number a factor of the count (0.75:
    the operator declared a quarter too few).
    """
    if choice == "rounded":
        return None
    if choice == "exact":
        return records
    return max(1, round(records * float(choice)))


@dataclass(frozen=True)
class Override:
    """One ``--set``: a job field, for every pipeline or for one (``pipeline`` not None)."""

    pipeline: str | None
    section: str
    key: str
    value: object


def parse_override(text: str) -> Override:
    """``[PIPELINE:]train.optimizer=adamw`` as an :class:`Override`; ``ValueError`` if malformed.

    With a pipeline prefix (``prototypes+lora:train.learning_rate=0.002``) the field is set
    only in that pipeline's rows, so pipelines with other measured defaults run side by side.
    """
    name, equals, raw = text.partition("=")
    pipeline: str | None = None
    if ":" in name:
        prefix, _, name = name.partition(":")
        pipeline = pipeline_name(*parse_pipeline(prefix))
    section, dot, key = name.strip().partition(".")
    if not equals or not dot or section not in ("train", "privacy") or not key:
        raise ValueError(f"{text!r}: expected train.KEY=VALUE or privacy.KEY=VALUE")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: a string
    return Override(pipeline, section, key, value)


@dataclass
class Row:
    """One regime of one pipeline at one epsilon: mean accuracy over its runs."""

    regime: str
    update: str | None  # None: a non-private reference
    epsilon: float
    accuracy: float
    runs: list[float] = field(default_factory=list)
    spent: list[float] = field(default_factory=list)  # the largest epsilon any party spent
    seconds: float = 0.0
    unit: str = "record"  # what epsilon protects: "record", or "person:K" (K kept records)


def parse_unit(text: str) -> str:
    """``record``, ``person`` (cap ``DEFAULT_CAP``) or ``person:K`` as ``record``/``person:K``.

    Raises:
        ValueError: anything else.
    """
    name, _, cap = text.strip().partition(":")
    if name == "record" and not cap:
        return "record"
    if name == "person" and (not cap or (cap.isdigit() and int(cap) >= 1)):
        return f"person:{cap or DEFAULT_CAP}"
    raise ValueError(f"{text!r}: expected record, person or person:K (K records kept per person)")


def unit_cap(unit: str) -> int | None:
    """A person unit's cap of records per person; None for records."""
    return None if unit == "record" else int(unit.partition(":")[2])


def unit_label(unit: str) -> str:
    cap = unit_cap(unit)
    return "per record" if cap is None else f"per person, cap {cap}"


def _skewed(
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    classes: int,
    size: int,
    alpha: float,
    rng: np.random.Generator,
) -> tuple[list[str], list[int]]:
    """``size`` rows, label mix drawn from Dirichlet(alpha); a short label gives what it has."""
    mix = rng.dirichlet(np.full(classes, alpha))
    wanted = rng.multinomial(size, mix)
    by_label: dict[int, list[int]] = {k: [] for k in range(classes)}
    for index, label in enumerate(labels):
        by_label[label].append(index)
    chosen: list[int] = []
    for label, count in enumerate(wanted):
        chosen.extend(by_label[label][: int(count)])
    rng.shuffle(chosen)
    return [texts[i] for i in chosen], [labels[i] for i in chosen]


def _write_csv(
    path: Path,
    texts: Sequence[str],
    labels: Sequence[int],
    names: Sequence[str],
    people: Sequence[str] | None = None,
) -> None:
    """The rows as the product reads them; with ``people``, a ``PERSON_COLUMN`` too."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if people is None:
            writer.writerow(("text", "label"))
            writer.writerows((t, names[y]) for t, y in zip(texts, labels, strict=True))
        else:
            writer.writerow(("text", "label", PERSON_COLUMN))
            writer.writerows(
                (t, names[y], who) for t, y, who in zip(texts, labels, people, strict=True)
            )


@dataclass(frozen=True)
class Prepared:
    """The bench's data: the demo job, each country's skewed rows (CSV) and the test set."""

    job: Path
    files: dict[str, Path]
    rows: dict[str, tuple[list[str], list[int]]]
    test: tuple[list[str], list[int]]
    test_file: Path
    labels: tuple[str, ...]
    people: dict[str, list[str]] | None = None
    """Each country's rows' person ids (``--people``), in row order; None: records only."""


def reported(test: tuple[list[str], list[int]]) -> tuple[list[str], list[int]]:
    """The test rows the coordinator reports on: every reference scores on these alone.

    The product holds out the rest (``server/held_out.py``) to choose its kept round.
    """
    held = split_rows(test[0], VALIDATION_SHARE)
    keep = [i for i, out in enumerate(held) if not out]
    return [test[0][i] for i in keep], [test[1][i] for i in keep]


def _print_mix(country: str, labels: Sequence[int], classes: int, note: str = "") -> None:
    mix = np.bincount(np.asarray(labels, dtype=np.int64), minlength=classes).tolist()
    print(f"  {country}: {len(labels)} rows, labels {mix}{note}")


def _write_pooled(
    folder: Path,
    rows: dict[str, tuple[list[str], list[int]]],
    labels: Sequence[str],
    people: dict[str, list[str]] | None = None,
) -> Path:
    """Every country's rows in one file: the central row's single party."""
    pooled = folder / "pooled.csv"
    _write_csv(
        pooled,
        [t for texts, _ in rows.values() for t in texts],
        [y for _, ys in rows.values() for y in ys],
        labels,
        None if people is None else [who for c in rows for who in people[c]],
    )
    return pooled


def prepare(
    folder: Path,
    *,
    countries: tuple[str, ...],
    examples: int,
    test_examples: int,
    alpha: float,
    model: str,
    seed: int,
) -> Prepared:
    """Write the demo job into ``folder`` with each country's rows re-drawn label-skewed."""
    # A pool four times larger than needed, so each country can draw its skewed mix.
    job, job_path = write_demo_job(
        folder,
        countries=countries,
        examples_per_country=4 * examples,
        test_examples=test_examples,
        model=model,
        seed=seed,
    )
    if CENTRAL_COUNTRY in countries:
        raise ValueError(f"--countries: {CENTRAL_COUNTRY} is the central row's stand-in")
    labels = tuple(job.data.labels)
    rng = np.random.default_rng(seed)
    files: dict[str, Path] = {}
    rows: dict[str, tuple[list[str], list[int]]] = {}
    print(f"label skew: Dirichlet(alpha={alpha:g}), {examples} rows per country")
    for node in job.nodes:
        if node.data is None:
            raise RuntimeError(f"{job_path}: node {node.country} has no data file")
        pool = read_labeled_texts(
            node.data, text_column="text", label_column="label", labels=labels
        )
        texts, ys = _skewed(
            pool.texts, pool.labels, classes=len(labels), size=examples, alpha=alpha, rng=rng
        )
        _write_csv(node.data, texts, ys, labels)
        files[node.country], rows[node.country] = node.data, (texts, ys)
        _print_mix(node.country, ys, len(labels))
    files[CENTRAL_COUNTRY] = _write_pooled(folder, rows, labels)
    if job.data.test is None:
        raise RuntimeError(f"{job_path}: the demo job has no test file")
    test = read_labeled_texts(
        job.data.test, text_column="text", label_column="label", labels=labels
    )
    return Prepared(
        job_path,
        files,
        rows,
        reported((list(test.texts), list(test.labels))),
        job.data.test,
        labels,
    )


LANGUAGE_COUNTRIES = {
    "de": "DE",
    "fr": "FR",
    "nl": "NL",
    "en": "GB",
    "es": "ES",
    "it": "IT",
    "pt": "PT",
    "pl": "PL",
    "sv": "SE",
    "da": "DK",
    "fi": "FI",
    "cs": "CZ",
    "el": "GR",
}
"""The country a language's rows live in under ``--regime language`` (its largest speaker)."""
SPLIT_REGIMES = ("dirichlet", "language")
MIN_COUNTRY_ROWS = 10
"""Fewest rows a Dirichlet draw may leave a country; a poorer draw is drawn again."""
DIRICHLET_DRAWS = 1000
CORPUS_ALPHA = 0.5
TEST_SHARE = 0.2
"""The largest part of a corpus held out for the test set; the rest trains."""


@dataclass(frozen=True)
class Split:
    """A corpus cut into a test set and each country's training rows, as corpus indices."""

    test: list[int]
    parts: dict[str, list[int]]
    shares: np.ndarray | None
    """(classes, countries): each class's Dirichlet proportions; None when split by language."""


def held_out_size(rows: int, wanted: int) -> int:
    """The test set's size: ``wanted``, or the corpus's ``TEST_SHARE`` if that is fewer."""
    return min(wanted, int(rows * TEST_SHARE))


def _apportion(total: int, shares: np.ndarray) -> np.ndarray:
    """``total`` split in ``shares`` by largest remainder: each within one of its exact share."""
    exact = shares / shares.sum() * total
    counts: np.ndarray = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


def _held_out(strata: Sequence[tuple[str, int]], size: int, rng: np.random.Generator) -> list[int]:
    """``size`` indices, each (language, label) stratum in its corpus share, drawn uniformly."""
    groups: dict[tuple[str, int], list[int]] = {}
    for index, stratum in enumerate(strata):
        groups.setdefault(stratum, []).append(index)
    keys = sorted(groups)
    counts = _apportion(size, np.array([len(groups[k]) for k in keys], dtype=np.float64))
    chosen: list[int] = []
    for key, count in zip(keys, counts, strict=True):
        chosen.extend(int(i) for i in rng.choice(groups[key], size=int(count), replace=False))
    return sorted(chosen)


def split_corpus(
    labels: Sequence[int],
    languages: Sequence[str],
    *,
    classes: int,
    countries: Sequence[str],
    regime: str,
    test: int,
    alpha: float,
    cap: int | None,
    seed: int,
) -> Split:
    """Hold out a stratified test set, then share the rest among ``countries``.

    ``dirichlet``: each class's rows are shared among the countries in proportions drawn from
    Dirichlet(alpha) (the standard label-skew split), redrawn until every country holds
    ``MIN_COUNTRY_ROWS``. ``language``: each language's rows go to its country
    (``countries`` is then one per language, in sorted language order). ``cap`` subsamples a
    larger country uniformly, which keeps its skew. Everything follows from ``seed``.

    Raises:
        ValueError: the corpus cannot be split so (one line naming the option to change).
    """
    rng = np.random.default_rng(seed)
    size = held_out_size(len(labels), test)
    if size < classes:
        raise ValueError(f"--test: {size} rows cannot hold {classes} labels; raise --test")
    test_set = _held_out(list(zip(languages, labels, strict=True)), size, rng)
    held = set(test_set)
    train = [i for i in range(len(labels)) if i not in held]
    shares: np.ndarray | None = None
    parts: dict[str, list[int]] = {c: [] for c in countries}
    if regime == "language":
        for index in train:
            parts[LANGUAGE_COUNTRIES[languages[index]]].append(index)
    else:
        by_class = [[i for i in train if labels[i] == k] for k in range(classes)]
        for rows in by_class:
            rng.shuffle(rows)
        for _ in range(DIRICHLET_DRAWS):
            shares = rng.dirichlet(np.full(len(countries), alpha), size=classes)
            counts = np.stack(
                [_apportion(len(rows), share) for rows, share in zip(by_class, shares, strict=True)]
            )
            if counts.sum(0).min() >= MIN_COUNTRY_ROWS:
                break
        else:
            raise ValueError(
                f"--alpha {alpha:g}: no Dirichlet draw in {DIRICHLET_DRAWS} gave each of "
                f"{len(countries)} countries {MIN_COUNTRY_ROWS} rows; raise --alpha or use "
                "fewer countries"
            )
        for rows, row_counts in zip(by_class, counts, strict=True):
            edges = np.concatenate([[0], np.cumsum(row_counts)])
            for country, start, stop in zip(countries, edges[:-1], edges[1:], strict=True):
                parts[country].extend(rows[start:stop])
    for country, members in parts.items():
        order = rng.permutation(len(members))
        if cap is not None:
            order = order[:cap]
        parts[country] = [members[i] for i in order]
    empty = [c for c, members in parts.items() if not members]
    if empty:
        raise ValueError(f"--countries: {', '.join(empty)} would get no rows; drop them")
    return Split(test_set, parts, shares)


def corpus_countries(corpus: Corpus, regime: str, countries: Sequence[str]) -> tuple[str, ...]:
    """The countries of a split: as given, or one per language under ``--regime language``.

    Raises:
        ValueError: a language has no country, or the split's countries are not 3 to 10.
    """
    if regime == "language":
        languages = sorted(set(corpus.languages))
        unknown = [lang for lang in languages if lang not in LANGUAGE_COUNTRIES]
        if len(languages) < 2 or unknown:
            raise ValueError(
                f"--regime language: {corpus.name} has languages {', '.join(languages)}; it "
                "needs several, each in LANGUAGE_COUNTRIES; use --regime dirichlet"
            )
        return tuple(LANGUAGE_COUNTRIES[lang] for lang in languages)
    if not 3 <= len(countries) <= 10 or len(set(countries)) != len(countries):
        raise ValueError(f"--countries {','.join(countries)}: give 3 to 10 distinct ISO codes")
    return tuple(countries)


def prepare_corpus(
    folder: Path,
    corpus: Corpus,
    *,
    countries: tuple[str, ...],
    regime: str,
    examples: int | None,
    test_examples: int,
    alpha: float,
    model: str,
    seed: int,
    people: int | None = None,
    own_label: float = OWN_LABEL,
) -> Prepared:
    """Write a job on ``corpus`` into ``folder``: each country's CSV, the test CSV, the job.

    ``people``: each country's rows are then dealt to up to that many people (see
    ``bench/people.py``: 1 to 50 records each, P(n) ~ n^-1.5, ``own_label`` of a person's
    records of their dominant label), drawn from the country's own rows so its label skew
    stays; rows no person drew are dropped, and a small country holds fewer people.
    """
    if CENTRAL_COUNTRY in countries:
        raise ValueError(f"--countries: {CENTRAL_COUNTRY} is the central row's stand-in")
    labels = corpus.label_names
    index = {name: k for k, name in enumerate(labels)}
    ys = [index[name] for name in corpus.labels]
    split = split_corpus(
        ys,
        corpus.languages,
        classes=len(labels),
        countries=countries,
        regime=regime,
        test=test_examples,
        alpha=alpha,
        cap=examples,
        seed=seed,
    )
    how = "one country per language" if regime == "language" else f"Dirichlet(alpha={alpha:g})"
    cap = f", at most {examples} rows per country" if examples is not None else ""
    print(f"{corpus.name}: {len(ys)} texts, {len(labels)} labels; split {how}{cap}")
    files: dict[str, Path] = {}
    rows: dict[str, tuple[list[str], list[int]]] = {}
    owners: dict[str, list[str]] | None = None if people is None else {}
    generator = np.random.default_rng(seed + 1)
    for country, part in split.parts.items():
        note = ""
        if owners is not None and people is not None:
            dealt = deal(np.asarray(ys), part, people, own_label=own_label, generator=generator)
            part = [i for person in dealt for i in person]
            owners[country] = [f"{country}-{k}" for k, rs in enumerate(dealt) for _ in rs]
            counts = np.array([len(rs) for rs in dealt])
            note = (
                f", {len(dealt)} people (records each: median {np.median(counts):.0f}, "
                f"mean {counts.mean():.1f}, max {counts.max()})"
            )
        rows[country] = ([corpus.texts[i] for i in part], [ys[i] for i in part])
        files[country] = folder / f"{country}.csv"
        _write_csv(
            files[country], *rows[country], labels, None if owners is None else owners[country]
        )
        spoken = sorted({corpus.languages[i] for i in part})
        _print_mix(country, rows[country][1], len(labels), f" ({', '.join(spoken)}){note}")
    files[CENTRAL_COUNTRY] = _write_pooled(folder, rows, labels, owners)
    test = ([corpus.texts[i] for i in split.test], [ys[i] for i in split.test])
    test_file = folder / "test.csv"
    _write_csv(test_file, *test, labels)
    update, warm_start = DEFAULT_PIPELINE
    train: dict[str, object] = {"update": update.value, "seed": seed}
    if warm_start is not None:
        train["warm_start"] = warm_start.value
    job: dict[str, object] = {
        "name": f"accuracy-{corpus.name}",
        "model": {"path": model, "max_length": 64},
        "data": {
            "text_column": "text",
            "label_column": "label",
            "labels": list(labels),
            "test": test_file.name,
        },
        "train": train,
        "privacy": {
            "target_epsilon": 8.0,
            "delta": 1e-5,
            "max_grad_norm": 1.0,
            "accountant": "prv",
        },
        "nodes": [{"country": c, "data": files[c].name} for c in countries],
    }
    job_path = folder / "job.toml"
    job_path.write_text(tomli_w.dumps(job), encoding="utf-8")
    load_job(job_path)  # the product's own validation: an unknown country is one line here
    return Prepared(job_path, files, rows, reported(test), test_file, labels, owners)


def _simulate(
    prepared: Prepared,
    folder: Path,
    *,
    countries: Sequence[str],
    pipeline: str,
    epsilon: float,
    settings: Settings,
    unit: str = "record",
) -> tuple[float, float]:
    """Run one job through ``residency simulate``: (final accuracy, largest epsilon spent).

    A person ``unit`` makes every node person-level (the job's simulation-only node fields,
    as node.toml would), with the people of ``prepared.people``.
    """
    update, warm_start = parse_pipeline(pipeline)
    data = tomllib.loads(prepared.job.read_text("utf-8"))
    data["name"] = f"accuracy-{update.value}"
    data["model"]["max_length"] = settings.max_length
    release = traits_for(update).is_release
    data["train"] = {"update": update.value}  # the pipeline's own defaults, unless set below
    if warm_start is not None:
        data["train"]["warm_start"] = warm_start.value
    elif release:
        data["train"]["rounds"] = 1
    else:
        data["train"].update(
            rounds=settings.rounds,
            local_epochs=settings.local_epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
        )
    data["privacy"].update(
        target_epsilon=epsilon, delta=settings.delta, max_grad_norm=settings.max_grad_norm
    )
    for override in settings.overrides:  # the job's own validation judges them
        if override.pipeline in (None, pipeline):
            data[override.section][override.key] = override.value
    data["data"]["test"] = str(prepared.test_file)
    data["nodes"] = []
    for country in countries:
        node: dict[str, object] = {"country": country, "data": str(prepared.files[country])}
        records = sum(len(ys) for _, ys in prepared.rows.values())
        if country in prepared.rows:
            records = len(prepared.rows[country][1])
        public = public_size(records, settings.public_records)
        if public is not None:
            node["public_records"] = public
        cap = unit_cap(unit)
        if cap is not None:
            if prepared.people is None:
                raise ValueError("--units person needs --people")
            node.update(privacy_unit="person", person_column=PERSON_COLUMN, records_per_person=cap)
        data["nodes"].append(node)
    folder.mkdir(parents=True)
    job = folder / "job.toml"
    job.write_text(tomli_w.dumps(data), encoding="utf-8")
    out = folder / "out"
    done = subprocess.run(
        [RESIDENCY, "simulate", str(job), "--output", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"residency simulate {job} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    results = Results.model_validate_json((out / "results.json").read_text("utf-8"))
    if results.final is None or results.final.accuracy is None:
        raise RuntimeError(f"{out}/results.json has no final accuracy")
    spent = [p.epsilon for p in results.privacy.values() if p.epsilon is not None]
    trace = " ".join(_round_trace(r) for r in results.rounds)
    kept = f", kept round {results.final.round}" if results.final.round is not None else ""
    print(
        f"    {pipeline} {unit_label(unit)} eps={epsilon:g}: rounds (reported/held-out) "
        f"{trace}{kept}",
        flush=True,
    )
    return results.final.accuracy, max(spent, default=math.nan)


def _round_trace(result: RoundResult) -> str:
    """One round as the trace prints it: reported accuracy, held-out accuracy, a refine."""
    text = "-" if result.accuracy is None else f"{result.accuracy:.3f}"
    if result.held_out_accuracy is not None:
        text += f"/{result.held_out_accuracy:.3f}"
    return text + (" (refined)" if result.refine else "")


def product_rows(
    prepared: Prepared,
    folder: Path,
    *,
    pipeline: str,
    epsilons: Sequence[float],
    regimes: set[str],
    repeats: int,
    settings: Settings,
    units: Sequence[str] = ("record",),
) -> list[Row]:
    """Every regime of one pipeline at every epsilon and unit, each ``repeats`` times."""
    countries = [c for c in prepared.rows]
    parties: list[tuple[str, list[str]]] = []
    if "federated" in regimes:
        parties.append(("federated", countries))
    if "local" in regimes:
        parties.extend((f"local-only {c}", [c]) for c in countries)
    if "central" in regimes:
        parties.append(("central", [CENTRAL_COUNTRY]))
    rows: list[Row] = []
    for epsilon, unit, (regime, members) in (
        (e, u, p) for e in epsilons for u in units for p in parties
    ):
        started = time.perf_counter()
        runs, spent = [], []
        for repeat in range(repeats):
            label = pipeline.replace(PIPELINE_JOIN, "-then-")
            where = folder / (
                f"{label}-{unit.replace(':', '')}-{regime.replace(' ', '-')}-{epsilon:g}-{repeat}"
            )
            accuracy, eps = _simulate(
                prepared,
                where,
                countries=members,
                pipeline=pipeline,
                epsilon=epsilon,
                settings=settings,
                unit=unit,
            )
            runs.append(accuracy)
            spent.append(eps)
        row = Row(
            regime=regime,
            update=pipeline,
            epsilon=epsilon,
            accuracy=float(np.mean(runs)),
            runs=runs,
            spent=spent,
            seconds=(time.perf_counter() - started) / repeats,
            unit=unit,
        )
        print(
            f"  {pipeline:<10} {unit_label(unit)} {regime:<16} eps={_eps(epsilon):>4}: "
            f"{row.accuracy:.3f} (runs {', '.join(f'{a:.3f}' for a in runs)}; "
            f"spent {max(spent):.2f}; {row.seconds:.0f} s per run)",
            flush=True,
        )
        rows.append(row)
    return rows


def reference_features(
    prepared: Prepared, settings: Settings
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
    """What the classifier head reads (normalised mean features), for each country and the test."""
    model = build_classifier(
        ModelSpec(source=settings.model, labels=prepared.labels, update=UpdateKind.PROTOTYPES)
    )
    tokenizer = load_tokenizer(settings.model)
    compute = pick_compute()

    def encoded(rows: tuple[list[str], list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        data = encode(rows[0], rows[1], tokenizer, max_length=settings.max_length)
        features = head_features(model, classifier_head(model), data, compute=compute)
        vectors, labels = features.tensors
        return prototypes.unit_rows(vectors).float(), labels

    return {c: encoded(r) for c, r in prepared.rows.items()}, encoded(prepared.test)


def _accuracy(
    weight: torch.Tensor, bias: torch.Tensor, test: tuple[torch.Tensor, torch.Tensor]
) -> float:
    features, labels = test
    return float(((features @ weight.T + bias).argmax(1) == labels).float().mean())


def _fedavg_probe(
    parties: dict[str, tuple[torch.Tensor, torch.Tensor]], classes: int, *, rounds: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-private federated linear probe: FedAvg of full-batch softmax regression."""
    width = next(iter(parties.values()))[0].shape[1]
    weight, bias = torch.zeros(classes, width), torch.zeros(classes)
    total = sum(len(y) for _, y in parties.values())
    for _ in range(rounds):
        new_weight, new_bias = torch.zeros_like(weight), torch.zeros_like(bias)
        for features, labels in parties.values():
            w = weight.clone().requires_grad_(True)
            b = bias.clone().requires_grad_(True)
            optimizer = torch.optim.SGD([w, b], lr=20.0)
            for _ in range(10):
                loss = torch.nn.functional.cross_entropy(features @ w.T + b, labels)
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
            share = len(labels) / total
            new_weight += share * w.detach()
            new_bias += share * b.detach()
        weight, bias = new_weight, new_bias
    return weight, bias


@dataclass(frozen=True)
class Finetune:
    """The non-private central LoRA fine-tuning reference: AdamW on the pooled training rows."""

    epochs: int
    limit: int
    learning_rate: float
    batch_size: int = 32
    seed: int = 0


def finetune_row(prepared: Prepared, settings: Settings, finetune: Finetune) -> Row:
    """The product's own LoRA model trained centrally without noise, scored on the test set.

    Up to ``finetune.limit`` pooled rows, drawn uniformly, train it (a CPU takes minutes per
    thousand rows), at the bench's ``max_length``, with AdamW and a learning rate falling
    linearly to zero: what DP-SGD's LoRA could reach without noise, clipping or federation.
    """
    started = time.perf_counter()
    texts = [t for rows, _ in prepared.rows.values() for t in rows]
    labels = [y for _, ys in prepared.rows.values() for y in ys]
    rng = np.random.default_rng(finetune.seed)
    if len(labels) > finetune.limit:
        chosen = rng.choice(len(labels), size=finetune.limit, replace=False)
        texts, labels = [texts[i] for i in chosen], [labels[i] for i in chosen]
    tokenizer = load_tokenizer(settings.model)
    data = encode(texts, labels, tokenizer, max_length=settings.max_length)
    compute = pick_compute()
    model = build_classifier(
        ModelSpec(source=settings.model, labels=prepared.labels, update=UpdateKind.LORA)
    ).to(compute.device)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=finetune.learning_rate, weight_decay=0.01)
    steps = finetune.epochs * math.ceil(len(labels) / finetune.batch_size)
    schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=steps)
    order = torch.Generator().manual_seed(finetune.seed)
    for _ in range(finetune.epochs):
        loader = DataLoader(data, batch_size=finetune.batch_size, shuffle=True, generator=order)
        for input_ids, mask, ys in loader:
            ids, mask = trim(input_ids, mask)
            inputs = bert_inputs(ids.to(compute.device), mask.to(compute.device))
            with compute.autocast():
                logits = model(**inputs).logits.float()
            loss = torch.nn.functional.cross_entropy(logits, ys.to(compute.device))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
    test = encode(*prepared.test, tokenizer, max_length=settings.max_length)
    predicted, _ = predict(model, test, compute=compute)
    accuracy = float((predicted == test.tensors[2].numpy()).mean())
    seconds = time.perf_counter() - started
    print(
        f"  LoRA fine-tuning: {len(labels)} rows x {finetune.epochs} epochs, "
        f"lr {finetune.learning_rate:g}, {seconds:.0f} s",
        flush=True,
    )
    return Row("LoRA fine-tuning central (no DP)", None, NO_DP, accuracy, seconds=seconds)


def reference_rows(
    prepared: Prepared, settings: Settings, *, finetune: Finetune | None = None
) -> list[Row]:
    """Non-private references on the product's own features (in-process, no noise).

    ``finetune``: also the central LoRA fine-tuning reference (slow on a CPU).
    """
    started = time.perf_counter()
    parties, test = reference_features(prepared, settings)
    classes = len(prepared.labels)
    exact = prototypes.combined(
        [
            prototypes.release(f, y, classes=classes, noise_multiplier=0.0, generator=None)
            for f, y in parties.values()
        ]
    )
    rows = [
        Row("class means (no DP)", None, NO_DP, _accuracy(*prototypes.head_weights(exact), test))
    ]
    weight, bias = _fedavg_probe(parties, classes)
    rows.append(Row("linear probe fed. (no DP)", None, NO_DP, _accuracy(weight, bias, test)))
    pooled_x = torch.cat([f for f, _ in parties.values()]).numpy()
    pooled_y = torch.cat([y for _, y in parties.values()]).numpy()
    probe = LogisticRegression(C=10.0, max_iter=5000).fit(pooled_x, pooled_y)
    rows.append(
        Row(
            "linear probe central (no DP)",
            None,
            NO_DP,
            float(probe.score(test[0].numpy(), test[1].numpy())),
        )
    )
    majority = float(np.bincount(test[1].numpy()).max() / len(test[1]))
    rows.append(Row("majority class", None, NO_DP, majority))
    for row in rows:
        row.seconds = time.perf_counter() - started
    print(f"  features and probes: {time.perf_counter() - started:.0f} s", flush=True)
    if finetune is not None and finetune.epochs > 0:
        rows.insert(-1, finetune_row(prepared, settings, finetune))
    for row in rows:
        print(f"  {row.regime:<32}: {row.accuracy:.3f}", flush=True)
    return rows


def _eps(epsilon: float) -> str:
    return "none" if epsilon == NO_DP else f"{epsilon:g}"


def _label(row: Row) -> str:
    if row.update is None:
        return row.regime
    unit = "" if row.unit == "record" else f" ({unit_label(row.unit)[4:]})"
    return f"{row.update} {row.regime}{unit}"


def table(rows: list[Row], epsilons: list[float]) -> list[str]:
    """Rows by regime, columns by epsilon; fits 80 columns unless a label is long."""
    columns = [*epsilons, NO_DP]
    width = max(36, *(len(_label(r)) + 1 for r in rows))
    header = f"{'regime':<{width}}" + "".join(f"{'eps=' + _eps(e):>11}" for e in columns)
    lines = [header, "-" * len(header)]
    for label in dict.fromkeys(_label(row) for row in rows):
        cells = []
        for epsilon in columns:
            hit = [r for r in rows if _label(r) == label and r.epsilon == epsilon]
            cells.append(f"{hit[0].accuracy:>11.3f}" if hit else f"{'-':>11}")
        lines.append(f"{label:<{width}}" + "".join(cells))
    return lines


def targets(
    rows: list[Row], update: str, epsilons: list[float], examples: int, unit: str = "record"
) -> list[str]:
    """The issue's targets for the default pipeline, each met or MISSED, with its gap.

    Only ``unit``'s DP rows count; the references are the same for every unit.
    """
    rows = [r for r in rows if r.update is None or r.unit == unit]
    federated_references = {"class means (no DP)", "linear probe fed. (no DP)"}
    references = [r for r in rows if r.update is None and r.regime in federated_references]
    best = max(references, key=lambda r: r.accuracy)
    majority = next(r.accuracy for r in rows if r.regime == "majority class")
    lines = [
        f"targets for {update}, epsilon {unit_label(unit)}",
        f"  (best non-private federated: {best.regime} {best.accuracy:.3f}):",
    ]
    ours = {r.epsilon: r for r in rows if r.update == update and r.regime == "federated"}
    local = [r for r in rows if r.update == update and r.regime.startswith("local-only ")]
    for epsilon, points in sorted(target_points(examples).items(), reverse=True):
        if epsilon in ours:
            gap = 100 * (best.accuracy - ours[epsilon].accuracy)
            verdict = "met" if gap <= points else "MISSED"
            lines.append(
                f"  eps={_eps(epsilon)}: {ours[epsilon].accuracy:.3f}, gap {gap:+.1f} points, "
                f"target <= {points:g}: {verdict}"
            )
    if 1.0 in ours:
        floor = max([majority, *(r.accuracy for r in local if r.epsilon == 1.0)])
        verdict = "met" if ours[1.0].accuracy > floor else "MISSED"
        against = "every local-only and the majority" if local else "the majority (no local rows)"
        lines.append(f"  eps=1: {ours[1.0].accuracy:.3f} above {against} ({floor:.3f}): {verdict}")
    for epsilon in epsilons:
        alone = [r for r in local if r.epsilon == epsilon]
        if epsilon in ours and alone:
            worst = max(r.accuracy for r in alone)
            verdict = "met" if ours[epsilon].accuracy > worst else "MISSED"
            lines.append(
                f"  eps={_eps(epsilon)}: federation {ours[epsilon].accuracy:.3f} beats every "
                f"country alone (best {worst:.3f}): {verdict}"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument(
        "--corpus",
        default="demo",
        choices=["demo", *CORPORA],
        help="the data: the demo's synthetic notes, or a public corpus of bench/corpora.py",
    )
    parser.add_argument(
        "--regime",
        default="dirichlet",
        choices=SPLIT_REGIMES,
        help="how a corpus is split across countries: per-class Dirichlet(--alpha) label "
        "skew, or one country per language (multilingual corpora); not --regimes",
    )
    parser.add_argument("--countries", help="ISO codes (default DE,FR,ES; a corpus: 3 to 10)")
    parser.add_argument(
        "--examples",
        type=int,
        help="training rows per country (demo: default 500; a corpus: a cap, default none)",
    )
    parser.add_argument(
        "--test",
        type=int,
        default=600,
        help=f"rows in the mixed test set (a corpus: at most {TEST_SHARE:.0%}% of it)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        help=f"Dirichlet concentration (default 1 for the demo, {CORPUS_ALPHA:g} for a corpus)",
    )
    parser.add_argument(
        "--references-only",
        action="store_true",
        help="only the non-private references and the majority class, no product run",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        help="epochs of the central LoRA fine-tuning reference (default 2 for a corpus, "
        "0 = none, the demo's default)",
    )
    parser.add_argument(
        "--finetune-limit",
        type=int,
        default=4000,
        help="pooled rows (drawn uniformly) the fine-tuning reference trains on",
    )
    parser.add_argument("--finetune-lr", type=float, default=1e-3, help="its AdamW rate")
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument(
        "--people",
        type=int,
        help="a corpus: deal each country's rows to up to N people (1 to 50 records each, "
        "P(n) ~ n^-1.5), written in a 'person' column",
    )
    parser.add_argument(
        "--own-label",
        type=float,
        default=OWN_LABEL,
        help="with --people: the share of a person's records of their dominant label",
    )
    parser.add_argument(
        "--units",
        default="record",
        help=f"what epsilon protects in the DP rows: record, person (cap {DEFAULT_CAP}) or "
        "person:K, comma-separated; person needs --people",
    )
    parser.add_argument(
        "--updates",
        default=DEFAULT_PIPELINE_NAME,
        help="pipelines (e.g. prototypes,head,prototypes+head), the default first",
    )
    parser.add_argument(
        "--regimes", default=",".join(REGIMES), help=f"subset of {', '.join(REGIMES)}"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each DP row (fresh noise)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of a training pipeline")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every row here")
    parser.add_argument(
        "--public-records",
        default="rounded",
        help="each node's declared public size: rounded (the count to 2 significant "
        "figures, simulate's default), exact, or a factor of the count (e.g. 0.75)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[PIPELINE:]SECTION.KEY=VALUE",
        help="set a job field in every DP row, e.g. train.optimizer=adamw, or in one "
        "pipeline's rows, e.g. prototypes+lora:train.learning_rate=0.002 (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        epsilons = sorted({float(e) for e in args.epsilons.split(",")})
        updates = [pipeline_name(*parse_pipeline(u)) for u in args.updates.split(",")]
        overrides = tuple(parse_override(item) for item in args.set)
        units = list(dict.fromkeys(parse_unit(u) for u in args.units.split(",")))
    except ValueError as exc:
        parser.error(f"--epsilons, --updates, --set or --units: {exc}")
    if args.people is not None and (args.corpus == "demo" or args.people < 1):
        parser.error("--people: a positive count, with --corpus")
    if args.people is None and units != ["record"]:
        parser.error("--units person: give --people N to deal the rows to people")
    if not 0 <= args.own_label <= 1:
        parser.error("--own-label: a share from 0 to 1")
    regimes = {r.strip() for r in args.regimes.split(",")}
    if not regimes <= set(REGIMES) or "federated" not in regimes:
        parser.error(f"--regimes: federated plus any of {', '.join(REGIMES[1:])}")
    demo = args.corpus == "demo"
    examples: int | None = args.examples if args.examples is not None or not demo else 500
    alpha = args.alpha if args.alpha is not None else 1.0 if demo else CORPUS_ALPHA
    if (examples is not None and examples < 1) or args.repeats < 1:
        parser.error("--examples and --repeats must be at least 1")
    if args.test < 1 or alpha <= 0 or args.finetune_limit < 1:
        parser.error("--test, --alpha and --finetune-limit must be positive")
    if demo and args.regime != "dirichlet":
        parser.error("--regime: the demo is already one language per country; leave it out")
    if args.regime == "language" and args.countries is not None:
        parser.error("--countries: --regime language puts one country per language; leave it out")
    countries = tuple(c.strip() for c in (args.countries or "DE,FR,ES").split(","))
    finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else 0 if demo else 2
    if finetune_epochs < 0:
        parser.error("--finetune-epochs must be 0 or more")
    finetune = Finetune(finetune_epochs, args.finetune_limit, args.finetune_lr, seed=args.seed)
    settings = Settings(
        model=args.model,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_grad_norm=args.max_grad_norm,
        delta=args.delta,
        max_length=args.max_length,
        overrides=overrides,
        public_records=args.public_records,
    )
    if args.public_records not in ("rounded", "exact"):
        try:
            if float(args.public_records) <= 0:
                raise ValueError
        except ValueError:
            parser.error("--public-records: rounded, exact or a positive factor")
    started = time.perf_counter()
    with quiet_libraries(), tempfile.TemporaryDirectory(prefix="residency-accuracy-") as tmp:
        folder = Path(tmp)
        try:
            if demo:
                prepared = prepare(
                    folder,
                    countries=countries,
                    examples=examples or 0,
                    test_examples=args.test,
                    alpha=alpha,
                    model=args.model,
                    seed=args.seed,
                )
            else:
                corpus = load(args.corpus)
                countries = corpus_countries(corpus, args.regime, countries)
                prepared = prepare_corpus(
                    folder,
                    corpus,
                    countries=countries,
                    regime=args.regime,
                    examples=examples,
                    test_examples=args.test,
                    alpha=alpha,
                    model=args.model,
                    seed=args.seed,
                    people=args.people,
                    own_label=args.own_label,
                )
        except (ValueError, CorpusError) as exc:  # an unknown country...: one line, exit 2
            parser.error(str(exc))
        test_mix = np.bincount(prepared.test[1], minlength=len(prepared.labels)).tolist()
        print(f"test: {len(prepared.test[1])} rows" + ("" if demo else f", labels {test_mix}"))
        rows = reference_rows(prepared, settings, finetune=finetune)
        for update in [] if args.references_only else updates:
            rows.extend(
                product_rows(
                    prepared,
                    folder / "runs",
                    pipeline=update,
                    epsilons=list(reversed(epsilons)),
                    regimes=regimes,
                    repeats=args.repeats,
                    settings=settings,
                    units=units,
                )
            )
    print()
    sizes = [len(ys) for _, ys in prepared.rows.values()]
    per_country = f"{examples} notes" if demo else f"{min(sizes)}-{max(sizes)} rows"
    split = f"Dirichlet {alpha:g}" if args.regime == "dirichlet" else "one per language"
    runs = "no DP rows" if args.references_only else f"mean of {args.repeats} run(s) per DP row"
    print(
        f"accuracy on the global test set, {args.corpus}, {args.model}, {per_country} per "
        f"country ({split}), {runs}:"
    )
    if args.set:
        print(f"every DP row with {', '.join(args.set)}")
    product = [r for r in rows if r.update is not None and not r.regime.startswith("local-only ")]
    for update, epsilon, unit in ((u, e, n) for u in updates for e in epsilons for n in units):
        local = [
            r
            for r in rows
            if r.update == update
            and r.epsilon == epsilon
            and r.unit == unit
            and r.regime.startswith("local-only ")
        ]
        if local:
            scores = [r.accuracy for r in local]
            best, mean = max(scores), float(np.mean(scores))
            product.append(Row("local-only (best)", update, epsilon, best, unit=unit))
            product.append(Row("local-only (mean)", update, epsilon, mean, unit=unit))
    ordered = [r for r in rows if r.update is None] + sorted(
        product,
        key=lambda r: (
            updates.index(r.update or DEFAULT_PIPELINE_NAME),
            units.index(r.unit),
            r.regime,
        ),
    )
    for line in table(ordered, epsilons):
        print(line)
    for unit in [] if args.references_only else units:
        print()
        for line in targets(rows, updates[0], epsilons, examples or int(np.mean(sizes)), unit):
            print(line)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        payload = {
            "corpus": args.corpus,
            "regime": "language" if demo else args.regime,
            "countries": list(prepared.rows),
            "seed": args.seed,
            "alpha": alpha if args.regime == "dirichlet" else None,
            "rows_per_country": dict(zip(prepared.rows, sizes, strict=True)),
            "test_rows": len(prepared.test[1]),
            "settings": {
                **asdict(settings),
                "examples": examples,
                "alpha": alpha,
                "repeats": args.repeats,
                "references_only": args.references_only,
                "people": args.people,
                "own_label": args.own_label,
                "units": units,
                "finetune": asdict(finetune),
            },
            "rows": [
                {**asdict(r), "epsilon": None if r.epsilon == NO_DP else r.epsilon} for r in rows
            ],
        }
        write_atomic(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
