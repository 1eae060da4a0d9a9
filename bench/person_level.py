"""What person-level DP costs: the default pipeline per record and per person, on a real corpus.

A real public corpus's cached MiniLM features (``bench/pipeline_replay.py``) are dealt to
people: each country gets ``--people`` people, each holding 1 to 50 records with a skewed,
realistic count (a power law, P(n) ~ n^-1.5: most people have a few records, some many; mean
about 5) and mostly one label (``--own-label`` of a person's records share their dominant
label, as a patient's notes share a diagnosis). The same records then run the shipped
pipeline (release, then the head by full-batch DP-SGD for 5 rounds, ``pipeline_replay``'s
replay of the product's mechanism; the round best on the held-out half of the test set is
kept and a falling first round refines the release, as the coordinator does; ``--no-refine``
only keeps the best round) twice over:

- per record: every record is a unit, the public size is the record count (rounded);
- per person, for each ``--caps`` k: each person's first k records, weighted 1/n in the
  release and in each person's gradient, one clip per person (``common/privacy/people.py``), the
  public size is the number of people (rounded), and the step's cap divided by the records
  a person holds on average (``LocalSchedule.scaled``).

Both spend the same epsilon with the same noise multipliers (sample rate 1: every unit is in
every step), so the difference is what protecting a whole person costs: fewer units to average
the noise over, and the records beyond the cap. Each row is the mean over ``--draws`` noise
draws; the non-private central probe on all the records is the reference. Usage::

    python bench/person_level.py [--corpus tweets-sentiment] [--people 500,2000]
        [--epsilons 1,3,8] [--caps 1,5,10,50] [--countries DE,FR,ES] [--draws 3]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from accuracy import corpus_countries, split_corpus
from corpora import Corpus, CorpusError, load
from people import EXPONENT, MAX_RECORDS, deal
from pipeline_replay import (
    Plan,
    accuracy,
    corpus_features,
    names_prior,
    noise_multipliers,
    refine_noise,
    refine_now,
    step_size,
    training_start,
)
from sklearn.linear_model import LogisticRegression

from residency.cli.run_log import quiet_libraries
from residency.common.config.job import VALIDATION_SHARE
from residency.common.privacy.public_size import rounded_size
from residency.common.updates import prototypes
from residency.server.held_out import RELEASE_MARGIN, split_rows


@dataclass(frozen=True)
class Units:
    """One country's rows as the mechanism sees them: each row's unit and weight."""

    features: torch.Tensor  # unit-norm, float64
    labels: torch.Tensor
    owners: torch.Tensor  # each row's unit (a record's own index, or its person's)
    weights: torch.Tensor  # 1, or 1/n for each of a person's n kept rows
    public: int  # the public size in the unit, rounded as node init proposes
    records_per_unit: float = 1.0  # the node's figure (NodeSettings.records_per_unit)


def as_units(
    features: torch.Tensor, labels: torch.Tensor, people: list[list[int]], cap: int | None
) -> Units:
    """The rows per record (``cap`` None) or per person, each keeping their first ``cap``."""
    if cap is None:
        rows = [i for person in people for i in person]
        owners = torch.arange(len(rows))
        weights = torch.ones(len(rows), dtype=torch.float64)
        public = rounded_size(len(rows))
    else:
        kept = [person[:cap] for person in people]
        rows = [i for person in kept for i in person]
        owners = torch.repeat_interleave(
            torch.arange(len(kept)), torch.tensor([len(p) for p in kept])
        )
        weights = torch.tensor([1.0 / len(p) for p in kept for _ in p], dtype=torch.float64)
        public = rounded_size(len(kept))
    index = torch.tensor(rows)
    held = 1.0
    if cap is not None:  # public_records / public_people, at most the cap, as a node has it
        records = rounded_size(sum(len(p) for p in people))
        held = max(1.0, min(records / public, float(cap)))
    return Units(features[index], labels[index], owners, weights, public, held)


def _dp_steps(
    weight: torch.Tensor,
    bias: torch.Tensor,
    units: Units,
    features: torch.Tensor,
    *,
    plan: Plan,
    z: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch DP-GD of softmax regression: one clipped gradient per unit, then noise."""
    onehot = torch.nn.functional.one_hot(units.labels, weight.shape[0]).to(features.dtype)
    count = int(units.owners.max()) + 1
    clip, rate, lift = plan.max_grad_norm, step_size(plan, units.public, z), plan.bias_input
    if plan.stable_step is not None:  # the product's cap for people (LocalSchedule.scaled)
        rate = min(rate, plan.stable_step / clip / units.records_per_unit)
    for _ in range(plan.steps):
        error = (torch.softmax(features @ weight.T + bias, dim=1) - onehot) * units.weights[:, None]
        grad_w = torch.zeros((count, *weight.shape), dtype=features.dtype).index_add_(
            0, units.owners, error[:, :, None] * features[:, None, :]
        )
        grad_b = torch.zeros((count, *bias.shape), dtype=features.dtype).index_add_(
            0, units.owners, lift * error
        )
        norms = (grad_w.square().sum((1, 2)) + grad_b.square().sum(1)).sqrt()
        factor = (clip / (norms + 1e-6)).clamp(max=1.0)
        noisy_w = (grad_w * factor[:, None, None]).sum(0) + z * clip * torch.randn(
            weight.shape, generator=generator, dtype=weight.dtype
        )
        noisy_b = (grad_b * factor[:, None]).sum(0) + z * clip * torch.randn(
            bias.shape, generator=generator, dtype=bias.dtype
        )
        weight = weight - rate * noisy_w / units.public
        bias = bias - lift * rate * noisy_b / units.public
    return weight, bias


def replay(
    parties: dict[str, Units],
    test: tuple[torch.Tensor, torch.Tensor],
    held_out: tuple[torch.Tensor, torch.Tensor],
    *,
    classes: int,
    scale: torch.Tensor,
    prior: torch.Tensor,
    plan: Plan,
    seed: int,
) -> float:
    """The shipped pipeline (release, then the head), keeping the round best on ``held_out``.

    As the coordinator keeps its model (ties to the later round). With ``plan.choose``, a
    first training round that scores below the release on ``held_out`` ends the job as the
    coordinator ends it: every node releases again with what is left, and the two releases
    are merged (``server/held_out.py::refines``, ``pipeline_replay._refined``).
    """
    generator = torch.Generator().manual_seed(seed)
    z_release, z_train = noise_multipliers(
        plan.epsilon, plan.delta, plan.share, plan.rounds * plan.steps
    )
    releases = _releases(parties, classes, z_release, generator)
    statistics = prototypes.combined(releases, [z_release] * len(releases))
    weight, bias = (t.double() for t in prototypes.head_weights(statistics, prior))
    assert z_train is not None
    centre, spread, weight, bias = training_start(
        plan, statistics, weight, bias, scale, held_out[0]
    )
    standard = {c: (u.features - centre) / spread for c, u in parties.items()}
    total = sum(u.public for u in parties.values())
    test_raw = test
    test = ((test[0] - centre) / spread, test[1])
    held_out = ((held_out[0] - centre) / spread, held_out[1])
    kept = (accuracy(weight, bias, held_out), accuracy(weight, bias, test))
    for server_round in range(plan.rounds):
        new_weight, new_bias = torch.zeros_like(weight), torch.zeros_like(bias)
        for country, units in parties.items():
            w, b = _dp_steps(
                weight, bias, units, standard[country], plan=plan, z=z_train, generator=generator
            )
            new_weight += units.public / total * w
            new_bias += units.public / total * b
        weight, bias = new_weight, new_bias
        chosen = accuracy(weight, bias, held_out)
        if plan.choose and server_round == 0 and refine_now(plan, kept[0], chosen, held_out[1]):
            refine = (z_release, z_train)
            return _refined(
                parties, releases, refine, test_raw, classes, prior, plan, generator, centre
            )
        if chosen >= kept[0]:
            kept = (chosen, accuracy(weight, bias, test))
    return kept[1]


def _releases(
    parties: dict[str, Units], classes: int, z: float, generator: torch.Generator
) -> list[dict[str, np.ndarray]]:
    """Every country's release at noise multiplier ``z``, each row at its unit's weight."""
    return [
        prototypes.release(
            u.features,
            u.labels,
            classes=classes,
            noise_multiplier=z,
            generator=generator,
            weights=u.weights,
        )
        for u in parties.values()
    ]


def _refined(
    parties: dict[str, Units],
    releases: list[dict[str, np.ndarray]],
    noises: tuple[float, float],
    test: tuple[torch.Tensor, torch.Tensor],
    classes: int,
    prior: torch.Tensor,
    plan: Plan,
    generator: torch.Generator,
    centre: torch.Tensor,
) -> float:
    """Test accuracy of the release refined with what one training round left.

    Its threshold sits at training's ``centre``, as the coordinator sets it.
    """
    z_release, _ = noises
    z_refine = refine_noise(plan, *noises)
    again = _releases(parties, classes, z_refine, generator)
    merged = [
        prototypes.refined((first, z_release), (second, z_refine))
        for first, second in zip(releases, again, strict=True)
    ]
    statistics = prototypes.combined(
        [release for release, _ in merged], [noise or z_refine for _, noise in merged]
    )
    weight, bias = prototypes.head_weights(statistics, prior)
    bias = -(weight.double() @ centre)
    return accuracy(weight, bias, test)


@dataclass(frozen=True)
class Dealt:
    """The test rows (reported, held-out) and each country's people, as corpus indices."""

    reported: list[int]
    chooses: list[int]
    people: dict[str, list[list[int]]]


def deal_countries(
    corpus: Corpus, labels: np.ndarray, people: int, args: argparse.Namespace
) -> Dealt:
    """Each country's people: from one shared pool (``pool``), or as ``bench/accuracy.py``.

    ``dirichlet`` and ``language`` split the corpus with ``accuracy.split_corpus`` and deal
    each country's own rows with the generator ``prepare_corpus`` uses, so the people match
    ``bench/accuracy.py --people`` on the same seed.
    """
    countries = corpus_countries(
        corpus, args.regime, [c.strip() for c in args.countries.split(",")]
    )
    if args.regime == "pool":
        generator = np.random.default_rng(args.seed)
        order = generator.permutation(len(labels)).tolist()
        test_rows, pool = order[: args.test], order[args.test :]
        parts = None
    else:
        split = split_corpus(
            labels.tolist(),
            corpus.languages,
            classes=len(corpus.label_names),
            countries=countries,
            regime=args.regime,
            test=args.test,
            alpha=args.alpha,
            cap=None,
            seed=args.seed,
        )
        test_rows, parts = split.test, split.parts
        generator = np.random.default_rng(args.seed + 1)
    dealt: dict[str, list[list[int]]] = {}
    for country in countries:
        rows = pool if parts is None else parts[country]
        dealt[country] = deal(labels, rows, people, own_label=args.own_label, generator=generator)
        if parts is None:
            used = {i for person in dealt[country] for i in person}
            pool = [i for i in pool if i not in used]
    held = split_rows([corpus.texts[i] for i in test_rows], VALIDATION_SHARE)
    return Dealt(
        reported=[i for i, out in zip(test_rows, held, strict=True) if not out],
        chooses=[i for i, out in zip(test_rows, held, strict=True) if out],
        people=dealt,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="tweets-sentiment")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--countries", default="DE,FR,ES")
    parser.add_argument("--regime", default="pool", choices=("pool", "dirichlet", "language"))
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--people", default="500,2000", help="people per country")
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--caps", default="1,5,10,50")
    parser.add_argument("--own-label", type=float, default=0.8)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--alone", action="store_true", help="also each country by itself")
    parser.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="refine the release after a falling first round, as the coordinator does",
    )
    parser.add_argument(
        "--refine-margin",
        type=float,
        default=RELEASE_MARGIN,
        help="standard errors by which the release must beat the majority class on the "
        "held-out part to be refined (-inf: after any fall, the rule before)",
    )
    parser.add_argument(
        "--centre",
        choices=("shipped", "release", "held-out"),
        default="shipped",
        help="training's centre: the release's mean record and the held-out texts' by "
        "precision (shipped), or either alone",
    )
    parser.add_argument(
        "--bias-input",
        type=float,
        default=1.0,
        help="training's bias as the weight of a constant input of this size",
    )
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        corpus = load(args.corpus)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    features, scale = corpus_features(corpus, model=args.model, max_length=args.max_length)
    rows = features.double()
    index = {name: k for k, name in enumerate(corpus.label_names)}
    labels = np.array([index[name] for name in corpus.labels])
    prior = names_prior(corpus, model=args.model)
    classes = len(corpus.label_names)
    caps = [int(c) for c in args.caps.split(",")]
    print(
        f"{corpus.name} ({args.regime} split): {len(labels)} texts, {classes} labels; people "
        f"hold 1-{MAX_RECORDS} records, P(n) ~ n^-{EXPONENT}, {args.own_label:.0%} of a "
        f"person's records of their dominant label; shipped pipeline, {args.draws} draws"
    )
    for people in (int(p) for p in args.people.split(",")):
        try:
            dealt = deal_countries(corpus, labels, people, args)
        except ValueError as exc:  # a split the corpus cannot give: one line naming the option
            print(f"error: {exc}", file=sys.stderr)
            return 2
        test = (rows[dealt.reported], torch.from_numpy(labels[dealt.reported]))
        held_out = (rows[dealt.chooses], torch.from_numpy(labels[dealt.chooses]))
        tensor_labels = torch.from_numpy(labels)
        everyone = [i for country in dealt.people.values() for person in country for i in person]
        probe = LogisticRegression(max_iter=2000, C=10.0).fit(
            rows[everyone].numpy(), labels[everyone]
        )
        central = float((probe.predict(test[0].numpy()) == test[1].numpy()).mean())
        shares = ", ".join(
            f"{c} {len(p)} people / {sum(len(x) for x in p)} records"
            for c, p in dealt.people.items()
        )
        counts = np.array([len(p) for country in dealt.people.values() for p in country])
        print(
            f"\nup to {people} people per country ({shares}; records per person: median "
            f"{np.median(counts):.0f}, mean {counts.mean():.1f}, max {counts.max()}); "
            f"central probe, no DP: {central:.3f}"
        )
        units = {"per record": None, **{f"per person, cap {k}": k for k in caps}}
        for epsilon in (float(e) for e in args.epsilons.split(",")):
            for name, cap in units.items():
                parties = {
                    c: as_units(rows, tensor_labels, p, cap) for c, p in dealt.people.items()
                }
                groups = {"federation": parties}
                if args.alone:
                    groups |= {f"{c} alone": {c: u} for c, u in parties.items()}
                line = [f"eps={epsilon:<3g} {name}:"]
                plan = Plan(
                    epsilon=epsilon,
                    choose=args.refine,
                    refine_margin=args.refine_margin,
                    centre=args.centre,
                    bias_input=args.bias_input,
                )
                for group, members in groups.items():
                    scores = [
                        replay(
                            members,
                            test,
                            held_out,
                            classes=classes,
                            scale=scale,
                            prior=prior,
                            plan=plan,
                            seed=draw,
                        )
                        for draw in range(args.draws)
                    ]
                    line.append(f"{group} {np.mean(scores):.3f} (sd {np.std(scores):.3f})")
                print("  " + "; ".join(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
