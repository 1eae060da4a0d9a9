"""How to turn noisy class statistics into a head: the product's choice against the alternatives.

On the same data as ``bench/accuracy.py`` (its ``prepare``: skewed countries, mixed test set)
and the very features the head reads, each node's release is drawn ``--draws`` times at each
epsilon (noise multiplier from Opacus for one step at sample rate 1, as the node derives it;
seeded here so the variants see the same draws), and each head construction is scored:

- ``product``: the release as shipped (counts weighted 0.3, sensitivity 1.044), class and
  node effects separated by an additive fit, the node effects projected out
  (``common/updates/prototypes.py``);
- ``counts weight 1``: the same head from a release of counts at weight 1 (sensitivity 1.414);
- ``pooled centring``: pooled class means minus the overall mean, no per-node step;
- ``plain cosine``: cosine to the pooled class means, no centring at all.

Usage::

    python bench/prototype_heads.py [--model minilm|tiny] [--examples N] [--draws D]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from accuracy import Prepared, Settings, prepare, reference_features

from residency.cli.run_log import quiet_libraries
from residency.common.config.kinds import AccountantKind
from residency.common.privacy.accountant import noise_for_target
from residency.common.updates import prototypes

Parties = dict[str, tuple[torch.Tensor, torch.Tensor]]
Release = dict[str, np.ndarray]
Head = Callable[[list[Release]], tuple[torch.Tensor, torch.Tensor]]


def _release(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    *,
    z: float,
    weight: float,
    generator: torch.Generator,
) -> Release:
    """A node's release with counts weighted by ``weight`` (sensitivity sqrt(1 + weight^2))."""
    sums, counts = prototypes.class_statistics(features, labels, classes)
    std = z * math.sqrt(1 + weight**2)
    noisy_sums = sums + std * torch.randn(sums.shape, generator=generator, dtype=torch.float64)
    noisy_counts = counts + std / weight * torch.randn(
        counts.shape, generator=generator, dtype=torch.float64
    )
    return {
        prototypes.SUMS: noisy_sums.numpy().astype(np.float32),
        prototypes.COUNTS: noisy_counts.numpy().astype(np.float32),
    }


def _product(releases: list[Release]) -> tuple[torch.Tensor, torch.Tensor]:
    return prototypes.head_weights(prototypes.combined(releases))


def _pooled(releases: list[Release], *, centred: bool) -> tuple[torch.Tensor, torch.Tensor]:
    stats = prototypes.combined(releases)
    sums = torch.from_numpy(stats[prototypes.SUMS]).double()
    counts = torch.from_numpy(stats[prototypes.COUNTS]).double().clamp_min(1.0)
    means = sums / counts[:, None]
    overall = sums.sum(0) / counts.sum() if centred else torch.zeros(sums.shape[1]).double()
    directions = means - overall
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return directions.float(), -(directions @ overall).float()


HEADS: dict[str, tuple[float, Head]] = {
    "product": (prototypes.COUNT_WEIGHT, _product),
    "counts weight 1": (1.0, _product),
    "pooled centring": (prototypes.COUNT_WEIGHT, lambda r: _pooled(r, centred=True)),
    "plain cosine": (prototypes.COUNT_WEIGHT, lambda r: _pooled(r, centred=False)),
}


def score(
    parties: Parties,
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    classes: int,
    z: float,
    draws: int,
    seed: int,
) -> dict[str, list[float]]:
    """Accuracy of every head over ``draws`` releases at noise multiplier ``z``."""
    scores: dict[str, list[float]] = {name: [] for name in HEADS}
    features, labels = test
    for draw in range(draws):
        for name, (weight, head) in HEADS.items():
            generator = torch.Generator().manual_seed(seed * 100_003 + draw)  # same draws
            releases = [
                _release(f, y, classes, z=z, weight=weight, generator=generator)
                for f, y in parties.values()
            ]
            w, b = head(releases)
            predicted = (features @ w.T + b).argmax(1)
            scores[name].append(float((predicted == labels).float().mean()))
    return scores


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--countries", default="DE,FR,ES")
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = Settings(
        model=args.model,
        rounds=1,
        local_epochs=1,
        batch_size=1,
        learning_rate=1.0,
        max_grad_norm=1.0,
        delta=args.delta,
        max_length=args.max_length,
    )
    with quiet_libraries(), tempfile.TemporaryDirectory(prefix="residency-heads-") as tmp:
        prepared: Prepared = prepare(
            Path(tmp),
            countries=tuple(c.strip() for c in args.countries.split(",")),
            examples=args.examples,
            test_examples=args.test,
            alpha=args.alpha,
            model=args.model,
            seed=args.seed,
        )
        parties, test = reference_features(prepared, settings)
    classes = len(prepared.labels)
    epsilons = sorted(float(e) for e in args.epsilons.split(","))
    columns = [*epsilons, math.inf]
    results: dict[float, dict[str, list[float]]] = {}
    for epsilon in columns:
        z = (
            0.0
            if math.isinf(epsilon)
            else noise_for_target(
                target_epsilon=epsilon,
                delta=args.delta,
                sample_rate=1.0,
                steps=1,
                kind=AccountantKind.PRV,
            )
        )
        draws = 1 if z == 0.0 else args.draws
        results[epsilon] = score(parties, test, classes=classes, z=z, draws=draws, seed=args.seed)
    print()
    print(
        f"head from class statistics, {args.model}, {args.examples} notes per country "
        f"(Dirichlet {args.alpha:g}); mean ± std over {args.draws} noise draws:"
    )
    header = f"{'head':<18}" + "".join(
        f"{'eps=' + ('none' if math.isinf(e) else f'{e:g}'):>15}" for e in columns
    )
    print(header)
    print("-" * len(header))
    for name in HEADS:
        cells = "".join(
            f"{np.mean(results[e][name]):>8.3f} ± {np.std(results[e][name]):.3f}" for e in columns
        )
        print(f"{name:<18}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
