"""One-run canary audit: an empirical epsilon lower bound for a node's DP-SGD configuration.

The audit of Steinke, Nasr and Jagielski (arXiv:2305.08846) run through the node's own Opacus
mechanism (:func:`residency.common.privacy.dp_sgd.make_private`). The attack is white-box and in
gradient space ("Dirac" canaries): the model is one scalar per canary (``nn.Embedding(n, 1)``)
and canary ``i``'s loss has gradient ``-2 C e_i``, which clipping turns into exactly ``-C e_i``,
the most one example may move the model. Each canary is included independently with
probability 1/2; the included ones are the data set; DP-SGD (plain SGD, learning rate 1) runs
the configuration's steps at its sample rate and noise. A canary's score is how far its own
coordinate moved. The auditor guesses "in" for the highest scores and "out" for the lowest,
abstaining on the rest, and :mod:`residency.auditor.one_run_audit` turns the number of
correct guesses into an epsilon lower bound at the stated confidence. A bound above the
epsilon the configuration claims refutes the claim (flagged); a correct configuration is
flagged with probability at most ``1 - confidence``.

Two choices keep it valid and affordable:

* Runs. Opacus materialises every per-sample gradient, ``B x n`` numbers a step; with one run
  of 25,000 canaries that is 40-90 ms a step here. The canaries are split over several runs
  of a few thousand each, with independent randomness; a canary's inclusion changes only its
  own run, so by parallel composition the set of runs is exactly as private per canary as one
  run, and the theorem applies to them together. Each run is the configuration as given:
  all its steps at its sample rate and noise.
* Guesses. The auditor must not look at which canaries were included. Opacus divides a run's
  update by an expected batch size that depends on how many of its canaries were included,
  so each run's scores are divided by their own root mean square before all are ranked
  together; the auditor guesses on fixed fractions from the top and the bottom. The fractions
  are chosen before the run, by simulating the configuration's own score distribution with
  fresh random inclusions; one pre-registered rule needs no correction for multiple testing.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from residency.auditor.canary_settings import (
    MIN_CANARIES,
    CanaryAudit,
    CanarySettings,
    Mechanism,
)
from residency.auditor.one_run_audit import epsilon_ceiling, epsilon_lower_bound
from residency.common.privacy import dp_sgd
from residency.common.privacy.people import People, PeopleData, collate_people, row_weights

_GRADIENT_GAIN = 2.0
"""A canary's raw gradient norm over the clipping norm: above 1, so clipping makes it exactly C."""

_STEP_ENTRIES = 150_000
"""Per-sample gradient entries (about q n^2 / 2) one step of one run holds: cache-sized."""

_MIN_EXPECTED_BATCH = 2.0
"""Expected included canaries per Poisson batch of a run (Opacus averages by its integer part)."""

_SIMULATIONS = 3
"""Simulated audits the guessing rule is chosen on."""

_GUESS_FRACTIONS: tuple[tuple[float, float], ...] = (
    *((f, f) for f in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95)),
    *((f, 0.0) for f in (0.05, 0.2, 0.5, 0.8, 0.95)),
)
"""Candidate rules (in, out): the fractions of half the canaries guessed "in" from the top and
"out" from the bottom. One is chosen per configuration before the run."""


def min_canaries(mechanism: Mechanism) -> int:
    """Fewest canaries whose included half fills a Poisson batch with 2 on average."""
    return max(MIN_CANARIES, math.ceil(2 * _MIN_EXPECTED_BATCH / mechanism.sample_rate))


def run_sizes(mechanism: Mechanism, canaries: int) -> list[int]:
    """How many canaries each run gets: small enough to be fast, large enough for a batch.

    Raises:
        ValueError: Fewer than :func:`min_canaries`.
    """
    least = min_canaries(mechanism)
    if canaries < least:
        raise ValueError(
            f"{canaries} canaries at sample rate {mechanism.sample_rate:g} put "
            f"{canaries * mechanism.sample_rate / 2:.2g} in a Poisson batch on average, "
            f"under {_MIN_EXPECTED_BATCH:g}"
        )
    per_run = max(least, math.isqrt(int(2 * _STEP_ENTRIES / mechanism.sample_rate)))
    runs = max(1, math.ceil(canaries / per_run))
    return [len(chunk) for chunk in np.array_split(np.arange(canaries), runs)]


def canary_training(
    mechanism: Mechanism,
    *,
    canaries: int,
    included: torch.Tensor,
    sampler: torch.Generator,
    noise: torch.Generator,
) -> dp_sgd.PrivateTraining:
    """One run's model (a zero scalar per canary), SGD and Poisson loader, made private.

    Args:
        mechanism: The configuration under audit.
        canaries: The run's canaries, included or not: one model coordinate each.
        included: Indices of the included canaries: the run's whole training set.
        sampler: Generator of the Poisson sampling.
        noise: Generator of the Gaussian noise.
    """
    if len(included) == 0:
        raise RuntimeError("no canary of this run was included")
    model = torch.nn.Embedding(canaries, 1)
    torch.nn.init.zeros_(model.weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    batches = round(1 / mechanism.sample_rate)
    # Opacus keeps the data set and reads only len(loader) from this template: rate 1/len.
    records = mechanism.records_per_person
    template: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(
        TensorDataset(included) if records is None else _canary_people(included, records),
        batch_size=1,
        sampler=range(batches),
        generator=sampler,
        collate_fn=None if records is None else collate_people,
    )
    dp = dp_sgd.DpSgdSettings(
        noise_multiplier=mechanism.noise_multiplier,
        max_grad_norm=mechanism.max_grad_norm,
        accountant=mechanism.accountant,
    )
    return dp_sgd.make_private(model, optimizer, template, dp=dp, history=(), noise_generator=noise)


def _canary_people(included: torch.Tensor, records: int) -> PeopleData:
    """Each included canary as a person with ``records`` records, all pushing its coordinate.

    The node weighs a person's records 1/n and clips their summed gradient once, so a canary
    person moves its coordinate by the clipping norm, as a record canary does; a mechanism
    that clipped each record instead would move it ``records`` times as far.
    """
    rows = included.repeat_interleave(records)
    people = People.of([str(int(canary)) for canary in rows], records)
    return PeopleData(TensorDataset(rows), people)


def canary_scores(
    mechanism: Mechanism,
    in_run: np.ndarray,
    *,
    sampler: torch.Generator,
    noise: torch.Generator,
) -> np.ndarray:
    """Train one run on its included canaries; return how far each canary's coordinate moved.

    Args:
        mechanism: The configuration under audit.
        in_run: Whether each of the run's canaries is included.
        sampler: Generator of the Poisson sampling.
        noise: Generator of the Gaussian noise.
    """
    included = torch.from_numpy(np.flatnonzero(in_run))
    private = canary_training(
        mechanism, canaries=len(in_run), included=included, sampler=sampler, noise=noise
    )
    if private.optimizer.expected_batch_size < 1:
        raise RuntimeError(f"{len(included)} included canaries: Opacus' expected batch is 0")
    # A canary person's every record is clipped on its own too if a mechanism forgets to sum
    # them: the worst case a person-level audit must catch (each record alone moves C).
    gain = _GRADIENT_GAIN * mechanism.max_grad_norm * (mechanism.records_per_person or 1)
    steps = 0
    try:
        with warnings.catch_warnings():
            # Canary indices need no gradient, so torch notes that the hook fires on outputs.
            warnings.filterwarnings("ignore", message="Full backward hook", category=UserWarning)
            while steps < mechanism.steps:
                for batch, *owned in private.loader:
                    if steps == mechanism.steps:
                        break
                    steps += 1
                    if len(batch) == 0:
                        dp_sgd.noise_only_step(private.optimizer)
                        continue
                    moved = private.model(batch).reshape(-1)
                    if owned:  # a person's rows weigh 1/n; the optimizer clips per person
                        (owners,) = owned
                        private.optimizer.owners = owners
                        moved = moved * row_weights(owners)
                    loss = -gain * moved.mean()
                    loss.backward()
                    private.optimizer.step()
                    private.optimizer.zero_grad(set_to_none=True)
    finally:
        private.model._close()
    accounted = [(float(z), float(q), int(n)) for z, q, n in private.engine.accountant.history]
    planned = [(mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps)]
    if accounted != planned:
        raise RuntimeError(f"Opacus accounted {accounted}, planned {planned}")
    weight = private.model._module.weight.detach().reshape(-1)
    return np.asarray(weight.double().numpy(), dtype=np.float64)


def pooled_scores(runs: list[np.ndarray]) -> np.ndarray:
    """All canaries' scores on one scale: each run's divided by its own root mean square.

    Opacus divides a run's update by its expected batch size, which depends on how many of
    its canaries were included; the auditor may not know that, so it normalises by what it
    sees. Within a run, ranks are unchanged.
    """
    pooled = []
    for scores in runs:
        rms = float(np.sqrt(np.mean(np.square(scores))))
        pooled.append(scores / rms if rms > 0 else scores)
    return np.concatenate(pooled)


def guess(
    scores: np.ndarray, tiebreak: np.ndarray, fractions: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Indices guessed "in" (highest scores) and "out" (lowest); ties broken by ``tiebreak``.

    ``fractions`` are of half the canaries, the expected number included (or excluded).
    """
    order = np.lexsort((tiebreak, scores))
    half = len(order) / 2
    k_in, k_out = math.floor(fractions[0] * half), math.floor(fractions[1] * half)
    return order[len(order) - k_in :], order[:k_out]


def _tally(
    scores: np.ndarray, truth: np.ndarray, tiebreak: np.ndarray, fractions: tuple[float, float]
) -> tuple[int, int]:
    guessed_in, guessed_out = guess(scores, tiebreak, fractions)
    correct = int(truth[guessed_in].sum()) + int((~truth[guessed_out]).sum())
    return len(guessed_in) + len(guessed_out), correct


def choose_guess_fractions(
    mechanism: Mechanism, sizes: list[int], *, confidence: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Pick the guessing rule before the run: best mean bound over simulated audits.

    In units of one clipped step, an included canary's score is ``K + z sqrt(T) N(0, 1)`` with
    ``K ~ Binomial(T, q)`` its sampled steps, an excluded one's ``z sqrt(T) N(0, 1)``. The
    simulation draws its own inclusions, so the rule owes nothing to the real ones.
    """
    spread = mechanism.noise_multiplier * math.sqrt(mechanism.steps)
    canaries = sum(sizes)
    totals = dict.fromkeys(_GUESS_FRACTIONS, 0.0)
    for _ in range(_SIMULATIONS):
        inside = rng.random(canaries) < 0.5
        counts = rng.binomial(mechanism.steps, mechanism.sample_rate, canaries) * inside
        raw = counts + spread * rng.standard_normal(canaries)
        scores = pooled_scores(np.split(raw, np.cumsum(sizes)[:-1]))
        ties = rng.random(canaries)
        for fractions in _GUESS_FRACTIONS:
            guesses, correct = _tally(scores, inside, ties, fractions)
            totals[fractions] += epsilon_lower_bound(
                m=canaries,
                r=guesses,
                v=correct,
                delta=mechanism.delta,
                confidence=confidence,
                tolerance=1e-3,
            )
    return max(_GUESS_FRACTIONS, key=lambda fractions: totals[fractions])


def audit_canaries(mechanism: Mechanism, settings: CanarySettings) -> CanaryAudit:
    """Run the one-run audit of ``mechanism`` and compare its bound with the claimed epsilon.

    Raises:
        ValueError: Too few canaries for the sample rate, or no epsilon to check (no noise
            and no ``claimed_epsilon``).
    """
    started = time.perf_counter()
    claimed = settings.claimed_epsilon
    if claimed is None:
        claimed = mechanism.opacus_epsilon()
    if not math.isfinite(claimed):
        raise ValueError(
            f"noise multiplier {mechanism.noise_multiplier:g} claims no finite epsilon; "
            "pass the epsilon the node claims"
        )
    sizes = run_sizes(mechanism, settings.canaries)
    streams = np.random.SeedSequence(settings.seed).spawn(3)
    audit_rng, plan_rng = np.random.default_rng(streams[0]), np.random.default_rng(streams[1])
    fractions = choose_guess_fractions(
        mechanism, sizes, confidence=settings.confidence, rng=plan_rng
    )
    torch_seeds = np.random.default_rng(streams[2]).integers(2**62, size=(len(sizes), 2))
    runs, truth = [], []
    threads = torch.get_num_threads()
    # A step's tensors are small: one thread is several times faster than two (measured).
    torch.set_num_threads(1)
    try:
        for size, (sampler_seed, noise_seed) in zip(sizes, torch_seeds, strict=True):
            inside = audit_rng.random(size) < 0.5
            runs.append(
                canary_scores(
                    mechanism,
                    inside,
                    sampler=torch.Generator().manual_seed(int(sampler_seed)),
                    noise=torch.Generator().manual_seed(int(noise_seed)),
                )
            )
            truth.append(inside)
    finally:
        torch.set_num_threads(threads)
    included = np.concatenate(truth)
    guesses, correct = _tally(
        pooled_scores(runs), included, audit_rng.random(settings.canaries), fractions
    )
    bound = epsilon_lower_bound(
        m=settings.canaries,
        r=guesses,
        v=correct,
        delta=mechanism.delta,
        confidence=settings.confidence,
    )
    return CanaryAudit(
        mechanism=mechanism,
        claimed_epsilon=claimed,
        canaries=settings.canaries,
        included=int(included.sum()),
        runs=len(sizes),
        canaries_per_run=max(sizes),
        guess_in_fraction=fractions[0],
        guess_out_fraction=fractions[1],
        guesses=guesses,
        correct=correct,
        epsilon_lower_bound=bound,
        epsilon_ceiling=epsilon_ceiling(
            m=settings.canaries, r=guesses, delta=mechanism.delta, confidence=settings.confidence
        ),
        confidence=settings.confidence,
        flagged=bound > claimed,
        seed=settings.seed,
        elapsed_s=time.perf_counter() - started,
    )
