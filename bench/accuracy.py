"""Global test accuracy for epsilon in {1, 3, 8, no DP}: federated, central and local-only.

The data is the demo's synthetic triage notes (one language per country), re-drawn so each
country's labels follow its own Dirichlet(alpha) mix: label skew, as real institutions have.
Every regime trains the same model with the product's parts (``build_classifier``,
``encode``, ``train_dp_round`` with the node's noise from ``noise_for_target``, Flower's
``aggregate_arrayrecords`` for FedAvg, ``on_the_wire`` for the transfer precision) and is scored
on one mixed-language test set:

- federated: every country trains ``--local-epochs`` per round on its own data with its own
  noise (target epsilon per country), and the example-weighted average becomes the next
  round's global model;
- central: one party holds the pooled data and trains as many epochs as the federation's rounds;
- local-only: each country trains alone for the same epochs; the mean over countries is shown.

"no DP" trains on the same batch sizes with the same optimizer, without clipping or noise.
``--update`` picks what every party trains and sends (LoRA by default; ``head`` for the linear
probe). The federated epsilon-8 run is repeated with LoRA-FA (for LoRA) and with float16
transfer, to price the cheaper variants, and (``--simulate``) once through ``residency
simulate`` itself, to show the in-process loop measures what the product does. Usage::

    python bench/accuracy.py [--model minilm|tiny|PATH] [--examples N] [--rounds R] [--simulate]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tomli_w
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from torch.utils.data import DataLoader, TensorDataset

from residency.cli.demo import write_demo_job
from residency.cli.run_log import quiet_libraries
from residency.client.linear_probe import trained_part
from residency.client.randomness import RoundRandomness
from residency.client.trainer import (
    DpSgdSettings,
    LocalSchedule,
    dp_mode_for,
    train_dp_round,
)
from residency.common.config.job import AccountantKind, TransferDtype, UpdateKind
from residency.common.data.encoding import encode
from residency.common.data.readers import read_labeled_texts
from residency.common.device import Compute, pick_compute
from residency.common.evaluation import evaluate
from residency.common.files import write_atomic
from residency.common.model import (
    ModelSpec,
    Pooling,
    build_classifier,
    checkpoint_pooling,
    load_tokenizer,
    load_trainable_state,
    on_the_wire,
    trainable_state,
)
from residency.common.privacy.accountant import epsilon_spent, noise_for_target, poisson_schedule
from residency.server.results import Results

RESIDENCY = str(Path(sys.executable).parent / "residency")
NO_DP = math.inf
ACCOUNTANT = AccountantKind.PRV
# The targets: federated DP-LoRA within these many points of non-private federated.
TARGET_POINTS = {8.0: 3.0, 3.0: 5.0}
WEIGHT = "num-examples"
REGIMES = ("federated", "central", "local", "variants")


@dataclass(frozen=True)
class Settings:
    """One benchmark's shared training settings."""

    model: str
    rounds: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    max_grad_norm: float
    delta: float
    max_length: int
    seed: int
    pooling: Pooling = Pooling.AUTO
    update: UpdateKind = UpdateKind.LORA


@dataclass
class Row:
    """One regime at one epsilon: final accuracy, the curve over rounds, what it spent."""

    regime: str
    epsilon: float
    accuracy: float
    curve: list[float]
    spent: list[float] = field(default_factory=list)  # per training party
    noise: list[float] = field(default_factory=list)
    seconds: float = 0.0


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
    path: Path, texts: Sequence[str], labels: Sequence[int], names: Sequence[str]
) -> None:
    import csv

    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("text", "label"))
        writer.writerows((text, names[label]) for text, label in zip(texts, labels, strict=True))


def _train_plain(
    model: torch.nn.Module,
    data: TensorDataset,
    schedule: LocalSchedule,
    compute: Compute,
    randomness: RoundRandomness,
) -> None:
    """The non-private reference: same model, optimizer and batch size; no clipping, no noise."""
    generator = randomness.sampling_generator()
    torch.manual_seed(randomness.dropout_seed)  # as train_dp_round seeds it: runs repeat
    model.to(compute.device)
    part = trained_part(model, data, compute=compute)  # the head alone, as train_dp_round
    part.module.train()
    params = [p for p in part.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=schedule.learning_rate, weight_decay=0.0)
    loader = DataLoader(
        part.data, batch_size=schedule.batch_size, shuffle=True, generator=generator
    )
    for _ in range(schedule.epochs):
        for *inputs, labels in loader:
            with compute.autocast():
                logits = part.logits(part.module, inputs, device=compute.device)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels.to(compute.device))
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def _party_seed(seed: int, name: str) -> int:
    """A distinct seed per party: a hash of its name, not the sum of its letters (FR = ES)."""
    digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Party:
    """One training party: its data, its noise for the whole run, its composed history."""

    def __init__(
        self,
        name: str,
        data: TensorDataset,
        epsilon: float,
        settings: Settings,
        model: torch.nn.Module,
    ) -> None:
        self.name, self.data, self.epsilon, self.settings, self.model = (
            name,
            data,
            epsilon,
            settings,
            model,
        )
        self.history: tuple[tuple[float, float, int], ...] = ()
        rate, per_epoch = poisson_schedule(examples=len(data), batch_size=settings.batch_size)
        self.noise = (
            0.0
            if epsilon == NO_DP
            else noise_for_target(
                target_epsilon=epsilon,
                delta=settings.delta,
                sample_rate=rate,
                steps=settings.rounds * settings.local_epochs * per_epoch,
                kind=ACCOUNTANT,
            )
        )

    def train(self, server_round: int, update: UpdateKind, compute: Compute) -> None:
        """One round of local training, private unless this party's epsilon is "no DP"."""
        schedule = LocalSchedule(
            epochs=self.settings.local_epochs,
            batch_size=self.settings.batch_size,
            learning_rate=self.settings.learning_rate,
        )
        # A benchmark repeats exactly: its noise comes from a seed, as node.toml's noise_seed
        # would give (never in production); each party's seed differs.
        randomness = RoundRandomness.reproducible(
            _party_seed(self.settings.seed, self.name), server_round=server_round
        )
        if self.epsilon == NO_DP:
            _train_plain(self.model, self.data, schedule, compute, randomness)
            return
        dp = DpSgdSettings(
            noise_multiplier=self.noise,
            max_grad_norm=self.settings.max_grad_norm,
            accountant=ACCOUNTANT,
            grad_sample_mode=dp_mode_for(update),
        )
        outcome = train_dp_round(
            self.model,
            self.data,
            schedule=schedule,
            dp=dp,
            history=self.history,
            compute=compute,
            randomness=randomness,
        )
        self.history = outcome.history

    def spent(self) -> float:
        """The run's epsilon so far, from Opacus' accountant over the composed history."""
        if self.epsilon == NO_DP:
            return NO_DP
        return epsilon_spent(self.history, delta=self.settings.delta, kind=ACCOUNTANT)


def _spec(settings: Settings, labels: tuple[str, ...], update: UpdateKind) -> ModelSpec:
    return ModelSpec(
        source=settings.model,
        labels=labels,
        update=update,
        seed=settings.seed,
        pooling=settings.pooling,
    )


def federated(
    datasets: dict[str, TensorDataset],
    test: TensorDataset,
    *,
    epsilon: float,
    settings: Settings,
    labels: tuple[str, ...],
    update: UpdateKind | None = None,
    transfer: TransferDtype = TransferDtype.FLOAT32,
    regime: str = "federated",
) -> Row:
    """FedAvg over ``datasets`` (one party alone is central or local-only training).

    ``update`` overrides ``settings.update`` (the variants rows).
    """
    update = settings.update if update is None else update
    compute = pick_compute()
    started = time.perf_counter()
    spec = _spec(settings, labels, update)
    global_model = build_classifier(spec)
    parties = [
        Party(name, data, epsilon, settings, build_classifier(spec))
        for name, data in datasets.items()
    ]
    curve: list[float] = []
    for server_round in range(1, settings.rounds + 1):
        sent = on_the_wire(trainable_state(global_model), transfer)
        replies: list[RecordDict] = []
        for party in parties:
            load_trainable_state(party.model, sent)
            party.train(server_round, update, compute)
            arrays = on_the_wire(trainable_state(party.model), transfer)
            replies.append(
                RecordDict(
                    {
                        "arrays": ArrayRecord(
                            {k: Array(v.astype(np.float32)) for k, v in arrays.items()}
                        ),
                        "metrics": MetricRecord({WEIGHT: len(party.data)}),
                    }
                )
            )
        averaged = aggregate_arrayrecords(replies, WEIGHT)
        load_trainable_state(global_model, {k: v.numpy() for k, v in averaged.items()})
        curve.append(evaluate(global_model, test, labels, compute=compute).accuracy)
        print(
            f"  {regime:<22} eps={_eps(epsilon):>5} round {server_round}: acc {curve[-1]:.3f}",
            flush=True,
        )
    return Row(
        regime=regime,
        epsilon=epsilon,
        accuracy=curve[-1],
        curve=curve,
        spent=[party.spent() for party in parties],
        noise=[party.noise for party in parties],
        seconds=time.perf_counter() - started,
    )


def _finite(row: dict[str, object]) -> dict[str, object]:
    """JSON has no infinity: "no DP" is written as null."""

    def fix(value: object) -> object:
        if isinstance(value, float) and math.isinf(value):
            return None
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return {key: fix(value) for key, value in row.items()}


def _eps(epsilon: float) -> str:
    return "none" if epsilon == NO_DP else f"{epsilon:g}"


def _pooled(datasets: dict[str, TensorDataset]) -> TensorDataset:
    parts = list(datasets.values())
    return TensorDataset(*(torch.cat([part.tensors[i] for part in parts]) for i in range(3)))


def _simulate(folder: Path, job: Path, settings: Settings, epsilon: float) -> float:
    """Final accuracy of the same federated job run by ``residency simulate``."""
    data = tomllib.loads(job.read_text("utf-8"))
    data["name"] = "accuracy-simulate"
    data["model"]["max_length"] = settings.max_length
    data["train"].update(
        rounds=settings.rounds,
        local_epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        update=settings.update.value,
    )
    data["privacy"].update(
        target_epsilon=epsilon, delta=settings.delta, max_grad_norm=settings.max_grad_norm
    )
    sim_job = folder / "simulate-job.toml"
    sim_job.write_text(tomli_w.dumps(data), encoding="utf-8")
    out = folder / "simulate-out"
    subprocess.run(
        [RESIDENCY, "simulate", str(sim_job), "--output", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    results = Results.model_validate_json((out / "results.json").read_text("utf-8"))
    if results.final is None or results.final.accuracy is None:
        raise RuntimeError(f"{out}/results.json has no final accuracy")
    return results.final.accuracy


def _table(rows: list[Row], epsilons: list[float]) -> list[str]:
    regimes = list(dict.fromkeys(row.regime for row in rows))
    header = f"{'regime':<24}" + "".join(f"{'eps=' + _eps(e):>10}" for e in epsilons)
    lines = [header, "-" * len(header)]
    for regime in regimes:
        cells = []
        for epsilon in epsilons:
            hit = [row for row in rows if row.regime == regime and row.epsilon == epsilon]
            cells.append(f"{hit[0].accuracy:>10.3f}" if hit else f"{'-':>10}")
        lines.append(f"{regime:<24}" + "".join(cells))
    return lines


def prepare(
    folder: Path,
    *,
    countries: tuple[str, ...],
    examples: int,
    test_examples: int,
    alpha: float,
    model: str,
    max_length: int,
    seed: int,
) -> tuple[Path, dict[str, TensorDataset], TensorDataset, tuple[str, ...]]:
    """Write the demo job into ``folder`` with each country's rows re-drawn label-skewed.

    Returns the job file, each country's encoded rows, the encoded mixed test set and the
    labels. The CSV files are rewritten too, so ``--simulate`` trains on exactly these rows.
    """
    # A pool four times larger than needed, so each country can draw its skewed mix.
    job, job_path = write_demo_job(
        folder,
        countries=countries,
        examples_per_country=4 * examples,
        test_examples=test_examples,
        model=model,
        seed=seed,
    )
    labels = tuple(job.data.labels)
    tokenizer = load_tokenizer(model)
    rng = np.random.default_rng(seed)
    datasets: dict[str, TensorDataset] = {}
    print(f"label skew: Dirichlet(alpha={alpha:g}), {examples} rows per country")
    for node in job.nodes:
        if node.data is None:
            raise RuntimeError(f"{job_path}: node {node.country} has no data file")
        path = folder / node.data
        pool = read_labeled_texts(path, text_column="text", label_column="label", labels=labels)
        texts, ys = _skewed(
            pool.texts, pool.labels, classes=len(labels), size=examples, alpha=alpha, rng=rng
        )
        _write_csv(path, texts, ys, labels)
        counts = np.bincount(ys, minlength=len(labels))
        print(f"  {node.country}: {len(ys)} rows, labels {counts.tolist()}")
        datasets[node.country] = encode(texts, ys, tokenizer, max_length=max_length)
    test_rows = read_labeled_texts(
        folder / "test.csv", text_column="text", label_column="label", labels=labels
    )
    test = encode(test_rows.texts, test_rows.labels, tokenizer, max_length=max_length)
    majority = np.bincount(test_rows.labels).max() / len(test_rows.labels)
    print(f"test: {len(test_rows.labels)} rows, majority class {majority:.3f}")
    return job_path, datasets, test, labels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--countries", default="DE,FR,ES")
    parser.add_argument("--examples", type=int, default=500, help="training rows per country")
    parser.add_argument("--test", type=int, default=600, help="rows in the mixed test set")
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet concentration")
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--update",
        choices=[u.value for u in UpdateKind],
        default="lora",
        help="what each party trains and sends (the job's [train] update)",
    )
    parser.add_argument(
        "--pooling",
        choices=[p.value for p in Pooling],
        default="auto",
        help="override the checkpoint's head (compare [CLS] with mean pooling)",
    )
    parser.add_argument(
        "--regimes",
        default=",".join(REGIMES),
        help=f"comma-separated subset of {', '.join(REGIMES)} (variants: LoRA-FA, float16)",
    )
    parser.add_argument("--simulate", action="store_true", help="cross-check eps=8 in simulation")
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args(argv)
    epsilons = [*sorted(float(e) for e in args.epsilons.split(",")), NO_DP]
    regimes = {r.strip() for r in args.regimes.split(",")}
    if not regimes or not regimes <= set(REGIMES):
        parser.error(f"--regimes: choose from {', '.join(REGIMES)}")
    if 8.0 not in epsilons:
        parser.error("--epsilons must include 8: the variants and targets are measured there")
    countries = tuple(c.strip() for c in args.countries.split(","))
    settings = Settings(
        model=args.model,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_grad_norm=args.max_grad_norm,
        delta=args.delta,
        max_length=args.max_length,
        seed=args.seed,
        pooling=Pooling(args.pooling),
        update=UpdateKind(args.update),
    )
    if args.simulate and settings.pooling is not Pooling.AUTO:
        parser.error("--simulate runs the product, which always uses the checkpoint's pooling")
    started = time.perf_counter()
    # Every regime loads the checkpoint afresh; its load report would bury the table.
    with quiet_libraries(), tempfile.TemporaryDirectory(prefix="residency-accuracy-") as tmp:
        folder = Path(tmp)
        try:
            job_path, datasets, test, labels = prepare(
                folder,
                countries=countries,
                examples=args.examples,
                test_examples=args.test,
                alpha=args.alpha,
                model=args.model,
                max_length=args.max_length,
                seed=args.seed,
            )
        except ValueError as exc:  # an unknown country, a count below 1: one line, exit 2
            parser.error(str(exc))

        run: Callable[..., Row] = lambda data, epsilon, **kw: federated(  # noqa: E731
            data, test, epsilon=epsilon, settings=settings, labels=labels, **kw
        )
        rows: list[Row] = []
        # The targets first (eps 8 and no DP, federated), so a long run shows early
        # whether it is worth finishing.
        order = sorted(epsilons, key=lambda e: (e not in (8.0, NO_DP), -e))
        if "federated" in regimes:
            rows.extend(run(datasets, epsilon) for epsilon in order)
        if "central" in regimes:
            pooled = {"pooled": _pooled(datasets)}
            rows.extend(run(pooled, epsilon, regime="central") for epsilon in order)
        for epsilon in order if "local" in regimes else []:
            local = [run({c: d}, epsilon, regime=f"local-only {c}") for c, d in datasets.items()]
            rows.extend(local)
            rows.append(
                Row(
                    "local-only (mean)",
                    epsilon,
                    float(np.mean([r.accuracy for r in local])),
                    [float(a) for a in np.mean([r.curve for r in local], axis=0)],
                )
            )
        variants: list[Row] = []
        if "variants" in regimes and settings.update is UpdateKind.LORA:
            variants.append(
                run(datasets, 8.0, update=UpdateKind.LORA_FA, regime="federated lora-fa")
            )
        if "variants" in regimes:
            variants.append(
                run(datasets, 8.0, transfer=TransferDtype.FLOAT16, regime="federated float16")
            )
        simulated = _simulate(folder, job_path, settings, 8.0) if args.simulate else None

    pooling = (
        checkpoint_pooling(args.model) if settings.pooling is Pooling.AUTO else settings.pooling
    )
    print()
    print(
        f"accuracy on the global test set after {settings.rounds} rounds x "
        f"{settings.local_epochs} local epoch(s), {args.model} ({pooling.value} pooling), "
        f"update {settings.update.value}, batch {settings.batch_size}, "
        f"lr {settings.learning_rate:g}, C={settings.max_grad_norm:g}, "
        f"delta={settings.delta:g}, {ACCOUNTANT.value}:"
    )
    shown = [
        r for r in rows if not r.regime.startswith("local-only ") or r.regime == "local-only (mean)"
    ]
    for line in _table(shown, epsilons):
        print(line)
    federated_rows = {r.epsilon: r for r in rows if r.regime == "federated"}
    if federated_rows:
        _gaps(federated_rows, epsilons)
    for row in variants:
        print(f"{row.regime} at eps=8: {row.accuracy:.3f}", end="")
        if 8.0 in federated_rows:
            print(f" ({100 * (row.accuracy - federated_rows[8.0].accuracy):+.1f} points)", end="")
        print()
    if simulated is not None:
        print(f"residency simulate, same job at eps=8: {simulated:.3f}", end="")
        if 8.0 in federated_rows:
            print(f" (in-process loop {federated_rows[8.0].accuracy:.3f})", end="")
        print()
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        payload = {
            "settings": asdict(settings),
            "rows": [_finite(asdict(r)) for r in rows + variants],
            "simulated_eps8": simulated,
        }
        write_atomic(args.json, json.dumps(payload, indent=2))
    return 0


def _gaps(federated_rows: dict[float, Row], epsilons: list[float]) -> None:
    """Each federated epsilon's gap to non-private federated, against the issue's targets."""
    reference = federated_rows[NO_DP].accuracy
    print()
    print("federated DP against non-private federated, same update (points):")
    for epsilon in epsilons[:-1]:
        row = federated_rows[epsilon]
        gap = 100 * (reference - row.accuracy)
        spent = ", ".join(f"{s:.2f}" for s in row.spent)
        noise = ", ".join(f"{z:.2f}" for z in row.noise)
        target = TARGET_POINTS.get(epsilon)
        verdict = (
            ""
            if target is None
            else (f"target <= {target:g}: " + ("met" if gap <= target else "MISSED"))
        )
        print(
            f"  eps={_eps(epsilon):>4}: {row.accuracy:.3f} vs {reference:.3f}, gap {gap:+.1f}  "
            f"(noise {noise}; spent {spent})  {verdict}"
        )


if __name__ == "__main__":
    sys.exit(main())
