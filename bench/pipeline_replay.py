"""The default pipeline replayed on cached features: hundreds of settings in minutes.

``bench/accuracy.py`` runs the product itself (``residency simulate``), which re-encodes every
node's records each round: minutes per job on a CPU. Choosing a rule (the release's head, its
share of epsilon, the step size, the final model) needs hundreds of jobs, so this replays the
default pipeline's mechanism exactly on features encoded once:

- the release: :func:`prototypes.release` per node (noise multiplier from the product's
  accountant for one step at sample rate 1 and ``share`` of epsilon), summed by
  :func:`prototypes.combined`, turned into a head by a head rule;
- the warm-started head: features standardised with the release's noisy mean (clamped as the
  coordinator clamps it) and the encoder's public scale; per node, full-batch DP-GD (sample
  rate 1 up to 65,536 records, as the default's batch): per-example gradients of softmax
  regression clipped jointly over weight and bias to ``max_grad_norm`` (Opacus' flat
  clipping), summed, Gaussian noise of std ``z * max_grad_norm`` added, divided by the public
  size (Opacus' ``expected_batch_size``), one plain SGD step; ``steps`` steps a round, then
  FedAvg weighted by the public sizes. The noise multiplier of training is the product's
  ``noise_after`` the release.

What it leaves out is what does not change a full-batch head's trajectory: Flower, the wire,
the ledger. ``bench/accuracy.py`` confirms the chosen defaults on the product itself.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from residency.common.config.job import WARM_START_SHARE, AccountantKind
from residency.common.config.round_plan import FEATURE_CENTRE_BOUND, FEATURE_SCALE_FLOOR
from residency.common.privacy.accountant import noise_after, noise_for_target
from residency.common.updates import prototypes

Party = tuple[torch.Tensor, torch.Tensor]  # unit-norm features (float64), labels (long)
Release = dict[str, np.ndarray]
HeadRule = Callable[[dict[str, np.ndarray]], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Plan:
    """One setting of the pipeline (defaults: the product's)."""

    epsilon: float
    delta: float = 1e-5
    share: float = WARM_START_SHARE  # 1.0: the release alone spends everything
    rounds: int = 5
    steps: int = 10
    learning_rate: float = 0.032
    max_grad_norm: float = 1.0
    step_cap: float | None = None  # largest step on the mean gradient (None: the noise rule)
    average_from: int | None = None  # average the global heads from this round on (None: last)
    radius: float | None = None  # the Lipschitz rule's distance scale (None: the noise rule)


@functools.cache
def noise_multipliers(
    epsilon: float, delta: float, share: float, training_steps: int
) -> tuple[float, float | None]:
    """(release z, training z): the product's accountant at sample rate 1 (PRV)."""
    kind = AccountantKind.PRV
    if share >= 1.0 or training_steps == 0:
        release = noise_for_target(
            target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1, kind=kind
        )
        return release, None
    release = noise_for_target(
        target_epsilon=epsilon * share, delta=delta, sample_rate=1.0, steps=1, kind=kind
    )
    training = noise_after(
        ((release, 1.0, 1),),
        target_epsilon=epsilon,
        delta=delta,
        sample_rate=1.0,
        steps=training_steps,
        kind=kind,
    )
    return release, training


def releases(
    parties: Mapping[str, Party], classes: int, z: float, generator: torch.Generator
) -> list[Release]:
    """Every node's release, with the product's own function."""
    return [
        prototypes.release(x, y, classes=classes, noise_multiplier=z, generator=generator)
        for x, y in parties.values()
    ]


def accuracy(weight: torch.Tensor, bias: torch.Tensor, test: Party) -> float:
    """Share of ``test`` the linear head classifies right."""
    features, labels = test
    scores = features @ weight.T.to(features.dtype) + bias.to(features.dtype)
    return float((scores.argmax(1) == labels).double().mean())


def _dp_steps(
    weight: torch.Tensor,
    bias: torch.Tensor,
    party: Party,
    public: int,
    *,
    plan: Plan,
    z: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``plan.steps`` full-batch DP-GD steps of softmax regression on one node's rows."""
    features, labels = party
    onehot = torch.nn.functional.one_hot(labels, weight.shape[0]).to(features.dtype)
    input_norm = (features.square().sum(1) + 1.0).sqrt()
    clip = plan.max_grad_norm
    rate = plan.learning_rate * public / z
    if plan.radius is not None:
        size = weight.numel() + bias.numel()
        total = plan.rounds * plan.steps
        rate = plan.radius / (clip * math.sqrt(total * (1.0 + z**2 * size / public**2)))
    if plan.step_cap is not None:
        rate = min(rate, plan.step_cap)
    for _ in range(plan.steps):
        error = torch.softmax(features @ weight.T + bias, dim=1) - onehot
        norms = error.norm(dim=1) * input_norm
        factor = (clip / (norms + 1e-6)).clamp(max=1.0)
        scaled = error * factor[:, None]
        grad_w = scaled.T @ features
        grad_b = scaled.sum(0)
        grad_w = grad_w + z * clip * torch.randn(
            grad_w.shape, generator=generator, dtype=grad_w.dtype
        )
        grad_b = grad_b + z * clip * torch.randn(
            grad_b.shape, generator=generator, dtype=grad_b.dtype
        )
        weight = weight - rate * grad_w / public
        bias = bias - rate * grad_b / public
    return weight, bias


@dataclass(frozen=True)
class Trace:
    """Test accuracy after the release and after each training round (of the chosen model)."""

    release: float
    rounds: tuple[float, ...]
    halves: tuple[tuple[float, float], ...] = ()  # (first half, second half) of the test set,
    # for the release and every round's model: what a choice by held-out data would give

    @property
    def final(self) -> float:
        return self.rounds[-1] if self.rounds else self.release


def replay(
    parties: Mapping[str, Party],
    public: Mapping[str, int],
    test: Party,
    *,
    classes: int,
    scale: torch.Tensor,
    plan: Plan,
    head: HeadRule = prototypes.head_weights,
    seed: int,
) -> Trace:
    """One job of the pipeline ``plan`` describes, with fresh noise from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    training_steps = 0 if plan.share >= 1.0 else plan.rounds * plan.steps
    z_release, z_train = noise_multipliers(plan.epsilon, plan.delta, plan.share, training_steps)
    statistics = prototypes.combined(releases(parties, classes, z_release, generator))
    weight, bias = (t.double() for t in head(statistics))
    first = accuracy(weight, bias, test)
    half = len(test[1]) // 2

    def halves(w: torch.Tensor, b: torch.Tensor, data: Party) -> tuple[float, float]:
        return (
            accuracy(w, b, (data[0][:half], data[1][:half])),
            accuracy(w, b, (data[0][half:], data[1][half:])),
        )

    split = [halves(weight, bias, test)]
    if z_train is None:
        return Trace(first, (), tuple(split))
    centre = prototypes.feature_mean(statistics).clamp(-FEATURE_CENTRE_BOUND, FEATURE_CENTRE_BOUND)
    scale = scale.double().clamp_min(FEATURE_SCALE_FLOOR)
    weight, bias = (t.double() for t in prototypes.standardized(weight, bias, centre, scale))
    standard = {c: ((x - centre) / scale, y) for c, (x, y) in parties.items()}
    test_standard = ((test[0] - centre) / scale, test[1])
    total = sum(public[c] for c in parties)
    history: list[tuple[torch.Tensor, torch.Tensor]] = []
    scores: list[float] = []
    for server_round in range(plan.rounds):
        new_w, new_b = torch.zeros_like(weight), torch.zeros_like(bias)
        for country, party in standard.items():
            w, b = _dp_steps(
                weight, bias, party, public[country], plan=plan, z=z_train, generator=generator
            )
            new_w += public[country] / total * w
            new_b += public[country] / total * b
        weight, bias = new_w, new_b
        history.append((weight, bias))
        chosen = history
        if plan.average_from is not None:
            chosen = history[max(0, min(plan.average_from, server_round + 1) - 1) :]
        else:
            chosen = history[-1:]
        mean_w = torch.stack([w for w, _ in chosen]).mean(0)
        mean_b = torch.stack([b for _, b in chosen]).mean(0)
        scores.append(accuracy(mean_w, mean_b, test_standard))
        split.append(halves(mean_w, mean_b, test_standard))
    return Trace(first, tuple(scores), tuple(split))


def mean_trace(
    parties: Mapping[str, Party],
    public: Mapping[str, int],
    test: Party,
    *,
    classes: int,
    scale: torch.Tensor,
    plan: Plan,
    head: HeadRule = prototypes.head_weights,
    draws: int,
) -> tuple[float, tuple[float, ...], float]:
    """(release, per-round means, std of the final) over ``draws`` noise draws."""
    traces = [
        replay(parties, public, test, classes=classes, scale=scale, plan=plan, head=head, seed=s)
        for s in range(draws)
    ]
    finals = np.array([t.final for t in traces])
    mean_trace.selected = float(np.mean([_selected(t) for t in traces]))  # type: ignore[attr-defined]
    mean_trace.last_half = float(np.mean([t.halves[-1][1] for t in traces]))  # type: ignore[attr-defined]
    rounds = tuple(
        float(np.mean([t.rounds[i] for t in traces])) for i in range(len(traces[0].rounds))
    )
    return float(np.mean([t.release for t in traces])), rounds, float(finals.std())


def with_epsilon(plan: Plan, epsilon: float) -> Plan:
    return replace(plan, epsilon=epsilon)


def largest_step(plan: Plan, public: int) -> float:
    """The step on the mean gradient a node of ``public`` records takes under ``plan``."""
    _, z = noise_multipliers(plan.epsilon, plan.delta, plan.share, plan.rounds * plan.steps)
    rate = plan.learning_rate * public / (z or math.inf)
    return rate if plan.step_cap is None else min(rate, plan.step_cap)


def _selected(trace: Trace) -> float:
    """Accuracy on the test set's second half of the model the first half picks (best)."""
    best = max(range(len(trace.halves)), key=lambda i: trace.halves[i][0])
    return trace.halves[best][1]
