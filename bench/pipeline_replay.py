"""The default pipeline replayed on cached features: every choice, on real corpora, in minutes.

``bench/accuracy.py`` runs the product itself (``residency simulate``), which re-encodes every
node's records each round: minutes per job on a CPU. Choosing the release's head, its share of
epsilon and the step size needs hundreds of jobs, so this replays the default pipeline's
mechanism exactly on features the frozen encoder computed once per corpus:

- the release: :func:`prototypes.release` per node (noise multiplier from the product's
  accountant for one step at sample rate 1 and ``share`` of epsilon), summed by
  :func:`prototypes.combined`, turned into a head by a head rule;
- the warm-started head: features standardised with the release's noisy mean (clamped as the
  coordinator clamps it) and the encoder's public scale; per node, full-batch DP-GD (sample
  rate 1, as the default's batch of 65,536 gives): per-example gradients of softmax
  regression clipped jointly over weight and bias (Opacus' flat clipping), summed, Gaussian
  noise of std ``z * max_grad_norm`` added, divided by the public size (Opacus'
  ``expected_batch_size``), one plain SGD step at the node's step rule; ``steps`` steps a
  round, then FedAvg weighted by the public sizes. Training's noise multiplier is the
  product's ``noise_after`` the release.

What it leaves out does not change a full-batch head's trajectory: Flower, the wire, the
ledger. ``bench/accuracy.py`` confirms the shipped defaults on the product itself. Each row
is the mean over ``--draws`` noise draws on one split; the references are non-private and
computed on the same features. Usage::

    python bench/pipeline_replay.py --corpus bbc-news [--countries DE,FR,ES,IT,PL]
        [--regime dirichlet|language] [--alpha 0.5] [--epsilons 1,3,8] [--draws 3]
        [--examples N]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from accuracy import corpus_countries, split_corpus
from corpora import DEFAULT_CACHE, Corpus, CorpusError, load
from sklearn.linear_model import LogisticRegression

from residency.cli.run_log import quiet_libraries
from residency.client.trainer import STABLE_STEP
from residency.common.classifier_head import classifier_head
from residency.common.config.job import VALIDATION_SHARE, WARM_START_SHARE
from residency.common.config.kinds import AccountantKind, UpdateKind
from residency.common.config.round_plan import FEATURE_CENTRE_BOUND, FEATURE_SCALE_FLOOR
from residency.common.data.encoding import encode
from residency.common.device import pick_compute
from residency.common.feature_scale import public_feature_scale
from residency.common.head_input import head_features
from residency.common.label_prior import label_prior
from residency.common.model import ModelSpec, build_classifier, load_tokenizer
from residency.common.privacy.accountant import noise_after, noise_for_target
from residency.common.updates import prototypes
from residency.server.held_out import RELEASE_MARGIN, majority_share, refines, split_rows
from residency.server.training_centre import training_centre

Party = tuple[torch.Tensor, torch.Tensor]  # unit-norm features (float64), labels (long)
Release = dict[str, np.ndarray]  # one node's release, or the federation's statistics
HeadRule = Callable[[dict[str, np.ndarray]], tuple[torch.Tensor, torch.Tensor]]
FEATURES = DEFAULT_CACHE.parent / "features"


@dataclass(frozen=True)
class Plan:
    """One setting of the pipeline; the defaults are what the product ships."""

    epsilon: float
    delta: float = 1e-5
    share: float = WARM_START_SHARE  # 1.0: the release alone spends everything
    rounds: int = 5
    steps: int = 10
    learning_rate: float = 0.032
    max_grad_norm: float = 1.0
    stable_step: float | None = STABLE_STEP  # None: the noise rule uncapped
    head: str = "shipped"
    choose: bool = True  # the held-out part keeps the best round and may refine the release
    refine_margin: float = RELEASE_MARGIN  # -inf: refine after any fall (the rule before)
    centre: str = "shipped"  # by precision; "release": its mean alone; "held-out": the texts'
    bias_input: float = 1.0  # the bias as the weight of a constant input of this size


@functools.cache
def noise_multipliers(
    epsilon: float, delta: float, share: float, training_steps: int
) -> tuple[float, float | None]:
    """(release z, training z): the product's accountant (PRV) at sample rate 1."""
    kind = AccountantKind.PRV
    if share >= 1.0:
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


def node_centred_head(statistics: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's head before issue 25: each class centred within its own node.

    Every difference between node means was read as a site effect and projected out, which
    removes class signal where nodes differ by label mix; kept here as the baseline.
    """
    sums = torch.from_numpy(np.asarray(statistics[prototypes.SUMS], dtype=np.float64))
    node_means = torch.from_numpy(np.asarray(statistics[prototypes.NODE_MEANS], dtype=np.float64))
    weights = torch.from_numpy(
        np.asarray(statistics[prototypes.NODE_COUNTS], dtype=np.float64)
    ).clamp_min(0.0)
    total = weights.sum(dim=1)
    overall = (total[:, None] * node_means).sum(dim=0) / total.sum().clamp_min(1.0)
    deviations = sums - weights.T @ node_means
    offsets = node_means - overall
    basis, singular, _ = torch.linalg.svd(offsets.T, full_matrices=False)
    basis = basis[:, singular > 1e-9 * singular.max().clamp_min(1e-300)]
    deviations = deviations - (deviations @ basis) @ basis.T
    directions = deviations / deviations.norm(dim=1, keepdim=True).clamp_min(1e-12)
    weight = prototypes.TEMPERATURE * directions
    return weight, -(weight @ overall)


def global_means_head(statistics: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain cosine classifier on the federation's pooled noisy class means, centred."""
    sums = torch.from_numpy(np.asarray(statistics[prototypes.SUMS], dtype=np.float64))
    counts = torch.from_numpy(np.asarray(statistics[prototypes.COUNTS], dtype=np.float64))
    means = sums / counts.clamp_min(1.0)[:, None]
    overall = sums.sum(0) / counts.clamp_min(0.0).sum().clamp_min(1.0)
    directions = means - overall
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    weight = prototypes.TEMPERATURE * directions
    return weight, -(weight @ overall)


HEADS: dict[str, HeadRule] = {
    "no-prior": prototypes.head_weights,
    "node-centred": node_centred_head,
    "global-means": global_means_head,
}


def accuracy(weight: torch.Tensor, bias: torch.Tensor, test: Party) -> float:
    """Share of ``test`` the linear head classifies right."""
    features, labels = test
    scores = features @ weight.T.to(features.dtype) + bias.to(features.dtype)
    return float((scores.argmax(1) == labels).double().mean())


def step_size(plan: Plan, public: int, z: float) -> float:
    """The node's step on the mean gradient: the ``noise`` rule, capped as the product caps it."""
    rate = plan.learning_rate * public / z
    if plan.stable_step is not None:
        rate = min(rate, plan.stable_step / plan.max_grad_norm)
    return rate


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
    lift = plan.bias_input
    input_norm = (features.square().sum(1) + lift**2).sqrt()
    clip, rate = plan.max_grad_norm, step_size(plan, public, z)
    for _ in range(plan.steps):
        error = torch.softmax(features @ weight.T + bias, dim=1) - onehot
        factor = (clip / (error.norm(dim=1) * input_norm + 1e-6)).clamp(max=1.0)
        scaled = error * factor[:, None]
        noisy_w = scaled.T @ features + z * clip * torch.randn(
            weight.shape, generator=generator, dtype=weight.dtype
        )
        noisy_b = lift * scaled.sum(0) + z * clip * torch.randn(
            bias.shape, generator=generator, dtype=bias.dtype
        )
        weight = weight - rate * noisy_w / public
        bias = bias - lift * rate * noisy_b / public
    return weight, bias


@dataclass(frozen=True)
class Federation:
    """Each country's features and public size, the test set, the classes, the public scale."""

    parties: dict[str, Party]
    public: dict[str, int]
    test: Party
    classes: int
    scale: torch.Tensor
    prior: torch.Tensor | None = None  # each class's name, embedded (the shipped head's prior)
    held_out: Party | None = None  # the coordinator's held-out part, which only chooses


@dataclass(frozen=True)
class Trace:
    """Reported accuracy after each round, and of the model the coordinator keeps."""

    rounds: list[float]
    final: float
    refined: bool = False


def _releases(federation: Federation, z: float, generator: torch.Generator) -> list[Release]:
    return [
        prototypes.release(
            x, y, classes=federation.classes, noise_multiplier=z, generator=generator
        )
        for x, y in federation.parties.values()
    ]


def _release_head(
    federation: Federation, plan: Plan, statistics: Release
) -> tuple[torch.Tensor, torch.Tensor]:
    if plan.head == "shipped":
        weight, bias = prototypes.head_weights(statistics, federation.prior)
    else:
        weight, bias = HEADS[plan.head](statistics)
    return weight.double(), bias.double()


def replay(federation: Federation, plan: Plan, *, seed: int) -> Trace:
    """The pipeline with fresh noise from ``seed``, choosing as the coordinator does.

    With ``plan.choose`` and a held-out part: the kept model is the best round on it, and a
    first training round that scores below the release there gives the budget left to the
    release again (``server/federation.py``, ``server/held_out.py``).
    """
    generator = torch.Generator().manual_seed(seed)
    z_release, z_train = noise_multipliers(
        plan.epsilon, plan.delta, plan.share, plan.rounds * plan.steps
    )
    releases = _releases(federation, z_release, generator)
    statistics = prototypes.combined(releases, [z_release] * len(releases))
    weight, bias = _release_head(federation, plan, statistics)
    held_out = federation.held_out if plan.choose else None
    if z_train is None:
        alone = accuracy(weight, bias, federation.test)
        return Trace([alone], alone)
    texts = None if held_out is None else held_out[0]  # no held-out part, no texts to centre
    centre, scale, weight, bias = training_start(
        plan, statistics, weight, bias, federation.scale, texts
    )
    standard = {c: ((x - centre) / scale, y) for c, (x, y) in federation.parties.items()}
    test = ((federation.test[0] - centre) / scale, federation.test[1])
    held = None if held_out is None else ((held_out[0] - centre) / scale, held_out[1])
    # the release as the coordinator scores it: the head training starts from
    scores = [accuracy(weight, bias, test)]
    chosen = [] if held is None else [accuracy(weight, bias, held)]
    total = sum(federation.public.values())
    for server_round in range(plan.rounds):
        new_weight, new_bias = torch.zeros_like(weight), torch.zeros_like(bias)
        for country, party in standard.items():
            public = federation.public[country]
            w, b = _dp_steps(weight, bias, party, public, plan=plan, z=z_train, generator=generator)
            new_weight += public / total * w
            new_bias += public / total * b
        weight, bias = new_weight, new_bias
        scores.append(accuracy(weight, bias, test))
        if held is None:
            continue
        chosen.append(accuracy(weight, bias, held))
        if server_round == 0 and refine_now(plan, chosen[0], chosen[1], held[1]):
            refined = _refined(federation, plan, releases, (z_release, z_train), generator, centre)
            scores.append(refined)
            return Trace(scores, refined, refined=True)
    if not chosen:
        return Trace(scores, scores[-1])
    last_best = len(chosen) - 1 - int(np.argmax(chosen[::-1]))  # ties to the later, as better()
    return Trace(scores, scores[last_best])


def training_start(
    plan: Plan,
    statistics: Release,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    held_out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(centre, scale, weight, bias)``: the release's head standardised, as training starts.

    As ``GlobalModel._warm_start`` sets it: the centre by ``plan.centre`` (the product's
    :func:`training_centre` as shipped), the head's threshold there (a zero standardised bias),
    the public scale floored.
    """
    if plan.centre == "held-out" and held_out is not None:
        centre = held_out.mean(dim=0).clamp(-FEATURE_CENTRE_BOUND, FEATURE_CENTRE_BOUND)
    else:  # without texts, the product's centre is the release's mean alone
        centre = training_centre(statistics, held_out if plan.centre == "shipped" else None)
    spread = scale.double().clamp_min(FEATURE_SCALE_FLOOR)
    weight, _ = prototypes.standardized(weight, bias, centre, spread)
    return centre, spread, weight.double(), torch.zeros_like(bias, dtype=torch.float64)


def refine_now(plan: Plan, release: float, trained: float, held_out: torch.Tensor) -> bool:
    """The coordinator's refine decision on held-out labels ``held_out``, at the plan's margin."""
    labels = held_out.tolist()
    return refines(
        release,
        trained,
        majority=majority_share(labels),
        rows=len(labels),
        margin=plan.refine_margin,
    )


def refine_noise(plan: Plan, z_release: float, z_train: float) -> float:
    """The refining release's noise: what the release and one training round left."""
    return noise_after(
        ((z_release, 1.0, 1), (z_train, 1.0, plan.steps)),
        target_epsilon=plan.epsilon,
        delta=plan.delta,
        sample_rate=1.0,
        steps=1,
        kind=AccountantKind.PRV,
    )


def _refined(
    federation: Federation,
    plan: Plan,
    releases: list[Release],
    noises: tuple[float, float],
    generator: torch.Generator,
    centre: torch.Tensor,
) -> float:
    """Reported accuracy of the release refined with what one training round left.

    Its threshold sits at training's ``centre``, as the coordinator sets it.
    """
    z_release, _ = noises
    z_refine = refine_noise(plan, *noises)
    again = _releases(federation, z_refine, generator)
    merged = [
        prototypes.refined((first, z_release), (second, z_refine))
        for first, second in zip(releases, again, strict=True)
    ]
    statistics = prototypes.combined(
        [release for release, _ in merged], [noise or z_refine for _, noise in merged]
    )
    weight, bias = _release_head(federation, plan, statistics)
    bias = -(weight @ centre)
    return accuracy(weight, bias, federation.test)


def corpus_features(
    corpus: Corpus, *, model: str, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit-norm features of every text, the public feature scale), cached on disk."""
    digest = hashlib.sha256("\0".join(corpus.texts).encode()).hexdigest()[:16]
    key = hashlib.sha256(model.encode()).hexdigest()[:8]
    path = FEATURES / f"{digest}-{key}-{max_length}.pt"
    if path.exists():
        kept = torch.load(path, weights_only=True)
        return kept["features"], kept["scale"]
    spec = ModelSpec(source=model, labels=corpus.label_names, update=UpdateKind.PROTOTYPES)
    classifier = build_classifier(spec)
    tokenizer = load_tokenizer(model)
    compute = pick_compute()
    data = encode(list(corpus.texts), [0] * len(corpus.texts), tokenizer, max_length=max_length)
    rows = head_features(
        classifier, classifier_head(classifier), data, compute=compute, public=True
    )
    features = prototypes.unit_rows(rows.tensors[0]).float()
    scale = public_feature_scale(classifier, tokenizer, max_length=max_length, compute=compute)
    FEATURES.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    torch.save({"features": features, "scale": scale}, partial)
    partial.replace(path)
    return features, scale


def names_prior(corpus: Corpus, *, model: str) -> torch.Tensor:
    """The coordinator's prior: each label name through the encoder, as the product does."""
    spec = ModelSpec(source=model, labels=corpus.label_names, update=UpdateKind.PROTOTYPES)
    return label_prior(
        build_classifier(spec), load_tokenizer(model), corpus.label_names, compute=pick_compute()
    )


def federation_of(
    corpus: Corpus,
    features: torch.Tensor,
    scale: torch.Tensor,
    *,
    countries: tuple[str, ...],
    regime: str,
    alpha: float,
    test_examples: int,
    seed: int,
    prior: torch.Tensor | None,
    cap: int | None = None,
) -> Federation:
    """The corpus split as ``bench/accuracy.py`` splits it, on the cached features."""
    index = {name: k for k, name in enumerate(corpus.label_names)}
    labels = torch.tensor([index[name] for name in corpus.labels])
    split = split_corpus(
        labels.tolist(),
        corpus.languages,
        classes=len(corpus.label_names),
        countries=corpus_countries(corpus, regime, countries),
        regime=regime,
        test=test_examples,
        alpha=alpha,
        cap=cap,
        seed=seed,
    )
    rows = features.double()
    parties = {c: (rows[ix], labels[ix]) for c, ix in split.parts.items() if ix}
    held = split_rows([corpus.texts[i] for i in split.test], VALIDATION_SHARE)
    reported = [i for i, out in zip(split.test, held, strict=True) if not out]
    chooses = [i for i, out in zip(split.test, held, strict=True) if out]
    return Federation(
        parties=parties,
        public={c: len(y) for c, (_, y) in parties.items()},
        test=(rows[reported], labels[reported]),
        held_out=(rows[chooses], labels[chooses]) if chooses else None,
        classes=len(corpus.label_names),
        scale=scale,
        prior=prior,
    )


def references(federation: Federation) -> dict[str, float]:
    """Non-private references on the same features: probe, exact class means, majority."""
    features = torch.cat([x for x, _ in federation.parties.values()]).numpy()
    labels = torch.cat([y for _, y in federation.parties.values()]).numpy()
    probe = LogisticRegression(max_iter=2000, C=10.0).fit(features, labels)
    test_x, test_y = (t.numpy() for t in federation.test)
    exact = prototypes.combined(
        [
            {
                prototypes.SUMS: s.numpy().astype(np.float32),
                prototypes.COUNTS: n.numpy().astype(np.float32),
            }
            for s, n in (
                prototypes.class_statistics(x, y, federation.classes)
                for x, y in federation.parties.values()
            )
        ]
    )
    majority = np.bincount(labels, minlength=federation.classes).argmax()
    return {
        "linear probe, central": float((probe.predict(test_x) == test_y).mean()),
        "class means, exact (shipped head)": accuracy(
            *prototypes.head_weights(exact, federation.prior), federation.test
        ),
        "class means, exact (global means)": accuracy(*global_means_head(exact), federation.test),
        "majority class": float((test_y == majority).mean()),
    }


VARIANTS: dict[str, Callable[[float], Plan]] = {
    "shipped (release + head, chosen)": lambda e: Plan(epsilon=e),
    "refining after any fall": lambda e: Plan(epsilon=e, refine_margin=-math.inf),
    "centred on the release alone": lambda e: Plan(epsilon=e, centre="release"),
    "centred on the held-out texts": lambda e: Plan(epsilon=e, centre="held-out"),
    "bias as a constant input of 3": lambda e: Plan(epsilon=e, bias_input=3.0),
    "release + head, last round": lambda e: Plan(epsilon=e, choose=False),
    "before issue 25": lambda e: Plan(
        epsilon=e, share=0.25, stable_step=None, head="node-centred", choose=False
    ),
    "release alone (shipped head)": lambda e: Plan(epsilon=e, share=1.0),
    "release alone (no prior)": lambda e: Plan(epsilon=e, share=1.0, head="no-prior"),
    "release alone (global means)": lambda e: Plan(epsilon=e, share=1.0, head="global-means"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="a name of bench/corpora.py")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--countries", default="DE,FR,ES,IT,PL")
    parser.add_argument("--regime", default="dirichlet", choices=("dirichlet", "language"))
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--examples", type=int, help="at most this many rows per country")
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variants", help=f"a ;-separated subset of: {'; '.join(VARIANTS)} (default all)"
    )
    args = parser.parse_args(argv)
    variants = VARIANTS
    if args.variants:
        names = [n.strip() for n in args.variants.split(";")]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            parser.error(f"--variants: unknown {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
        variants = {n: VARIANTS[n] for n in names}
    quiet_libraries()
    model = args.model
    try:
        corpus = load(args.corpus)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    features, scale = corpus_features(corpus, model=model, max_length=args.max_length)
    countries = tuple(c.strip() for c in args.countries.split(","))
    federation = federation_of(
        corpus,
        features,
        scale,
        countries=countries,
        regime=args.regime,
        alpha=args.alpha,
        test_examples=args.test,
        seed=args.seed,
        prior=names_prior(corpus, model=model),
        cap=args.examples,
    )
    print(f"{args.corpus}, {args.regime} split (alpha {args.alpha:g}, seed {args.seed}):")
    for country, (_, y) in federation.parties.items():
        mix = np.bincount(y.numpy(), minlength=federation.classes).tolist()
        print(f"  {country}: {len(y)} rows, labels {mix}")
    print(f"  test: {len(federation.test[1])} rows")
    for name, value in references(federation).items():
        print(f"{name:<36} no DP  {value:.3f}")
    for epsilon in (float(e) for e in args.epsilons.split(",")):
        for name, variant in variants.items():
            plan = variant(epsilon)
            traces = [replay(federation, plan, seed=s) for s in range(args.draws)]
            finals = np.array([t.final for t in traces])
            longest = max(len(t.rounds) for t in traces)
            trained = np.array([t.rounds for t in traces if len(t.rounds) == longest])
            trace = trained.mean(axis=0)
            drop = float(max(0.0, *(trace[:-1] - trace[1:]))) if len(trace) > 1 else 0.0
            refined = sum(t.refined for t in traces)
            print(
                f"{name:<36} eps={epsilon:<3g} {finals.mean():.3f} (sd {finals.std():.3f}; "
                f"refined {refined}/{len(traces)}; trained runs by round "
                f"{' '.join(f'{a:.3f}' for a in trace)}; largest fall {drop:.3f})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
