"""``update = "prototypes"``: the release's sensitivity, its noise, its accounting and its head."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from residency.auditor.crosscheck import cross_check
from residency.auditor.one_run_audit import epsilon_lower_bound
from residency.common.config.kinds import AccountantKind, UpdateKind
from residency.common.errors import InvalidUpdate
from residency.common.model import ModelSpec, build_classifier
from residency.common.privacy.accountant import epsilon_spent, noise_for_target
from residency.common.updates import prototypes
from residency.common.updates.prototypes import (
    COUNT_WEIGHT,
    COUNTS,
    NODE_COUNTS,
    NODE_MEANS,
    SENSITIVITY,
    SUMS,
    class_and_node_effects,
    class_statistics,
    combined,
    head_weights,
    prior_records,
    release,
    set_head,
    unit_rows,
)

pytestmark = [
    pytest.mark.unit,
    # RDP at sample rate 1 and small noise: Opacus' order grid ends early; the bound holds.
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]

DELTA = 1e-5


def _joint(features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    sums, counts = class_statistics(features, labels, classes)
    return torch.cat([sums.flatten(), counts * COUNT_WEIGHT])


def test_rows_are_clipped_to_norm_one_whatever_their_scale() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(500, 64, generator=generator) * torch.logspace(-30, 30, 500)[:, None]
    rows[7] = 0.0
    unit = unit_rows(rows.float())
    norms = unit.norm(dim=1)
    assert unit.dtype == torch.float64
    assert float(norms.max()) <= 1.0
    assert float(norms[7]) == 0.0
    assert torch.allclose(norms[norms > 0], torch.ones(499, dtype=torch.float64))


def test_one_record_moves_the_release_by_at_most_its_sensitivity() -> None:
    """Add/remove adjacency: adding any one record, of any size and class, to any dataset."""
    generator = torch.Generator().manual_seed(1)
    classes, width = 4, 16
    worst = 0.0
    for trial in range(200):
        n = int(torch.randint(1, 50, (1,), generator=generator))
        features = torch.randn(n, width, generator=generator) * 10.0 ** (trial % 7 - 3)
        labels = torch.randint(0, classes, (n,), generator=generator)
        extra = torch.randn(1, width, generator=generator) * 10.0 ** (trial % 11 - 5)
        extra_label = torch.randint(0, classes, (1,), generator=generator)
        before = _joint(features, labels, classes)
        after = _joint(torch.cat([features, extra]), torch.cat([labels, extra_label]), classes)
        worst = max(worst, float((after - before).norm()))
    assert worst <= SENSITIVITY + 1e-12
    assert worst > SENSITIVITY - 1e-9  # the bound is reached, so the noise is not oversized
    assert math.isclose(SENSITIVITY, math.sqrt(1 + COUNT_WEIGHT**2))


def test_noise_std_is_the_multiplier_times_the_sensitivity_on_every_number() -> None:
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(30, 8, generator=generator)
    labels = torch.arange(30) % 3
    sums, counts = class_statistics(features, labels, 3)
    z = 1.7
    draws = [
        release(features, labels, classes=3, noise_multiplier=z, generator=generator)
        for _ in range(400)
    ]
    sum_noise = np.stack([d[SUMS] - sums.numpy() for d in draws])
    count_noise = np.stack([d[COUNTS] - counts.numpy() for d in draws])
    assert sum_noise.std() == pytest.approx(z * SENSITIVITY, rel=0.03)
    assert count_noise.std() == pytest.approx(z * SENSITIVITY / COUNT_WEIGHT, rel=0.05)
    assert abs(sum_noise.mean()) < 0.05 * z * SENSITIVITY


def test_the_noise_comes_from_the_given_generator_only() -> None:
    features, labels = torch.randn(10, 4), torch.arange(10) % 2

    def draw(seed: int) -> dict[str, np.ndarray]:
        torch.manual_seed(12345)  # the global stream must not matter
        return release(
            features,
            labels,
            classes=2,
            noise_multiplier=1.0,
            generator=torch.Generator().manual_seed(seed),
        )

    first, again, other = draw(5), draw(5), draw(6)
    assert all(np.array_equal(first[k], again[k]) for k in (SUMS, COUNTS))
    assert not np.array_equal(first[SUMS], other[SUMS])


def test_a_release_is_accounted_as_one_gaussian_step_and_both_libraries_agree() -> None:
    for kind in AccountantKind:
        z = noise_for_target(target_epsilon=8.0, delta=DELTA, sample_rate=1.0, steps=1, kind=kind)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no log(0) noise at q = 1
            opacus = epsilon_spent(((z, 1.0, 1),), delta=DELTA, kind=kind)
        assert 7.9 < opacus <= 8.0
        assert cross_check(((z, 1.0, 1),), delta=DELTA, kind=kind).problems(opacus) == []


def _canary_audit(noise_multiplier: float, *, canaries: int = 2000, seed: int = 0) -> float:
    """One-run audit (Steinke et al. 2023) of the release with Dirac canaries.

    Canary ``i`` is the feature vector ``e_i`` (norm 1, so clipping keeps it whole), included
    with probability 1/2; its score is how far the released sum moved along ``e_i``. The
    auditor guesses "in" for the top 10% of scores and "out" for the bottom 10%.
    """
    rng = torch.Generator().manual_seed(seed)
    included = torch.rand(canaries, generator=rng) < 0.5
    features = torch.eye(canaries)[included]
    labels = torch.zeros(len(features), dtype=torch.long)
    released = release(
        features,
        labels,
        classes=1,
        noise_multiplier=noise_multiplier,
        generator=torch.Generator().manual_seed(seed + 1),
    )
    order = np.argsort(released[SUMS][0])
    guesses = canaries // 10
    inside = included.numpy()
    correct = int(inside[order[-guesses:]].sum() + (~inside[order[:guesses]]).sum())
    return epsilon_lower_bound(m=canaries, r=2 * guesses, v=correct, delta=DELTA, confidence=0.95)


def test_canary_audit_passes_the_release_and_flags_one_with_too_little_noise() -> None:
    z = 2.0
    claimed = epsilon_spent(((z, 1.0, 1),), delta=DELTA, kind=AccountantKind.PRV)
    assert 1.9 < claimed < 2.1
    honest = _canary_audit(z)
    assert honest < claimed
    assert honest > 0.3  # the attack is not blind: it finds the canaries it can
    # A release that drew a tenth of the noise it claims: the audit refutes the claim.
    assert _canary_audit(z / 10) > claimed + 1.0


def _statistics(
    nodes: list[tuple[torch.Tensor, torch.Tensor]], classes: int
) -> dict[str, np.ndarray]:
    return combined(
        [release(f, y, classes=classes, noise_multiplier=0.0, generator=None) for f, y in nodes]
    )


def test_combined_sums_the_releases_and_keeps_each_nodes_means() -> None:
    a = (torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    b = (torch.tensor([[3.0, 0.0]]), torch.tensor([0]))
    stats = _statistics([a, b], 2)
    assert np.allclose(stats[SUMS], [[2.0, 0.0], [0.0, 1.0]])
    assert np.allclose(stats[COUNTS], [2.0, 1.0])
    assert np.allclose(stats[NODE_MEANS], [[0.5, 0.5], [1.0, 0.0]])
    assert np.allclose(stats[NODE_COUNTS], [[1.0, 1.0], [1.0, 0.0]])


def _site(
    offset: torch.Tensor, proportions: list[float], n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One institution's records: its own offset (its language), classes in its own mix."""
    centres = torch.eye(3, 32)
    labels = torch.multinomial(torch.tensor(proportions), n, replacement=True, generator=generator)
    features = offset + centres[labels] + 0.1 * torch.randn(n, 32, generator=generator)
    return features, labels


def test_the_head_is_not_fooled_by_institutions_that_hold_different_classes() -> None:
    """Sites that each hold mostly one class, each with its own offset.

    Naive class means learn the offsets (site = class); centring within each site and
    projecting the offsets out does not.
    """
    generator = torch.Generator().manual_seed(3)
    offsets = [torch.zeros(32) for _ in range(3)]
    for site, offset in enumerate(offsets):
        offset[10 + site] = 3.0
    mixes = [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]
    nodes = [_site(o, m, 400, generator) for o, m in zip(offsets, mixes, strict=True)]
    weight, bias = head_weights(_statistics(nodes, 3))
    # Test notes: every class at every site, in equal numbers.
    test = [_site(o, [1 / 3] * 3, 300, generator) for o in offsets]
    features = unit_rows(torch.cat([f for f, _ in test])).float()
    labels = torch.cat([y for _, y in test])
    accuracy = float(((features @ weight.T + bias).argmax(1) == labels).float().mean())
    sums = torch.cat([class_statistics(f, y, 3)[0][None] for f, y in nodes]).sum(0)
    counts = torch.cat([class_statistics(f, y, 3)[1][None] for f, y in nodes]).sum(0)
    naive = (sums / counts[:, None]).float()
    naive_accuracy = float(((features @ naive.T).argmax(1) == labels).float().mean())
    assert accuracy > 0.9, naive_accuracy
    assert naive_accuracy < 0.6, accuracy


def test_the_model_reads_normalised_features_and_the_head_scores_like_the_statistics() -> None:
    model = build_classifier(
        ModelSpec(source="tiny", labels=("a", "b", "c"), update=UpdateKind.PROTOTYPES)
    )
    assert model.config.normalize_features is True
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(60, model.config.hidden_size, generator=generator)
    labels = torch.arange(60) % 3
    stats = _statistics([(features[:30], labels[:30]), (features[30:], labels[30:])], 3)
    set_head(model, stats)
    weight, bias = head_weights(stats)
    assert torch.equal(model.classifier.weight.detach(), weight)
    assert torch.equal(model.classifier.bias.detach(), bias)
    assert set(prototypes.template(3, 32)) == {SUMS, COUNTS}


def test_the_head_keeps_class_signal_where_nodes_differ_only_in_label_mix() -> None:
    """Sites that write alike and hold other label mixes: their means differ by class alone.

    A head that read every difference between node means as a site effect projected class
    signal out (0.861 against 0.948 for global class means on the BBC corpus); this one must
    score as the global class means do. At MiniLM's width: projecting out the K - 1 offset
    directions that sampling alone makes costs about (K - 1) / width of the class signal.
    """
    width = 384
    generator = torch.Generator().manual_seed(5)
    shared = torch.zeros(width)
    mixes = [[0.8, 0.15, 0.05], [0.1, 0.3, 0.6], [0.34, 0.33, 0.33]]
    nodes = []
    for mix in mixes:
        labels = torch.multinomial(torch.tensor(mix), 400, replacement=True, generator=generator)
        noise = 0.6 * torch.randn(400, width, generator=generator)
        nodes.append((shared + torch.eye(3, width)[labels] + noise, labels))
    weight, bias = head_weights(_statistics(nodes, 3))
    labels = torch.arange(900) % 3
    test = unit_rows(
        torch.eye(3, width)[labels] + 0.6 * torch.randn(900, width, generator=generator)
    )
    accuracy = float(((test.float() @ weight.T + bias).argmax(1) == labels).float().mean())
    sums = torch.stack([class_statistics(f, y, 3)[0] for f, y in nodes]).sum(0)
    counts = torch.stack([class_statistics(f, y, 3)[1] for f, y in nodes]).sum(0)
    means = sums / counts[:, None]
    centred = means - means.mean(0)
    global_accuracy = float(((test @ centred.T).argmax(1) == labels).double().mean())
    assert accuracy >= global_accuracy - 0.01, (accuracy, global_accuracy)


def test_class_and_node_effects_recover_an_additive_federation() -> None:
    """Each node's class mean is its class's plus its own offset: both come back exactly."""
    generator = torch.Generator().manual_seed(6)
    classes, width = 4, 16
    class_means = torch.randn(classes, width, generator=generator, dtype=torch.float64)
    offsets = torch.randn(3, width, generator=generator, dtype=torch.float64)
    counts = torch.tensor([[50.0, 10.0, 0.0, 5.0], [5.0, 40.0, 30.0, 0.0], [20, 20, 20, 20]])
    cells = class_means[None] + offsets[:, None]  # node x class x width
    node_sums = (counts.double()[..., None] * cells).sum(1)
    totals = counts.sum(1)
    statistics = {
        SUMS: (counts.double()[..., None] * cells).sum(0).numpy(),
        NODE_MEANS: (node_sums / totals[:, None].double()).numpy(),
        NODE_COUNTS: counts.numpy(),
    }
    means, found, _ = class_and_node_effects(statistics)
    shift = (totals.double() @ offsets) / totals.sum()
    assert torch.allclose(found, offsets - shift, atol=1e-9)
    assert torch.allclose(means, class_means + shift, atol=1e-9)


def test_without_node_effects_the_head_is_the_pooled_class_means() -> None:
    """Nodes that differ only by label mix: the fit's offsets are sampling error, not used."""
    generator = torch.Generator().manual_seed(7)
    nodes = []
    for mix in ([0.7, 0.2, 0.1], [0.1, 0.2, 0.7]):
        labels = torch.multinomial(torch.tensor(mix), 500, replacement=True, generator=generator)
        noise = 0.3 * torch.randn(500, 64, generator=generator)
        nodes.append((torch.eye(3, 64)[labels] + noise, labels))
    statistics = _statistics(nodes, 3)
    weight, _ = head_weights(statistics)
    sums = torch.from_numpy(statistics[SUMS]).double()
    counts = torch.from_numpy(statistics[COUNTS]).double()
    pooled = sums / counts[:, None] - sums.sum(0) / counts.sum()
    expected = prototypes.TEMPERATURE * pooled / pooled.norm(dim=1, keepdim=True)
    assert torch.allclose(weight.double(), expected, atol=1e-4)


def test_a_public_prior_steadies_a_small_noisy_release() -> None:
    """A handful of records per class under heavy noise: the class names' prior decides.

    Without records the head is the prior's own cosine classifier; with a few noisy ones
    it scores better with the prior than without.
    """
    generator = torch.Generator().manual_seed(8)
    width, classes = 384, 3
    centres = unit_rows(torch.randn(classes, width, generator=generator))
    labels = torch.arange(12) % classes
    nodes = [(centres[labels] + 0.05 * torch.randn(12, width, generator=generator), labels)]
    test_labels = torch.arange(300) % classes
    test = unit_rows(centres[test_labels] + 0.05 * torch.randn(300, width, generator=generator))
    empty = combined([{SUMS: np.zeros((classes, width), np.float32), COUNTS: np.zeros(3)}], [2.0])
    weight, _ = head_weights(empty, centres)
    expected = centres - centres.mean(0)
    expected = prototypes.TEMPERATURE * expected / expected.norm(dim=1, keepdim=True)
    assert torch.allclose(weight.double(), expected, atol=1e-4)
    without, with_prior = [], []
    for _ in range(5):
        noisy = combined(
            [
                release(f, y, classes=classes, noise_multiplier=2.0, generator=generator)
                for f, y in nodes
            ],
            [2.0],
        )
        for scores, prior in ((without, None), (with_prior, centres)):
            w, b = head_weights(noisy, prior)
            predicted = (test.float() @ w.T + b).argmax(1)
            scores.append(float((predicted == test_labels).float().mean()))
    assert np.mean(with_prior) > np.mean(without) + 0.1, (with_prior, without)
    with pytest.raises(InvalidUpdate, match="class prior"):
        head_weights(empty, centres[:2])


def test_the_prior_weighs_half_the_noise_on_a_class_sum_and_nothing_without_noise() -> None:
    """In records: a release without noise is never pulled towards the names."""
    release_of = {SUMS: np.zeros((3, 384), np.float32), COUNTS: np.zeros(3, np.float32)}
    assert prior_records(combined([release_of])) == 0.0
    two = combined([release_of, release_of], [2.0, 2.0])
    expected = 0.5 * math.sqrt(2 * (2.0 * SENSITIVITY) ** 2 * 384)
    assert prior_records(two) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="2 noise multipliers for 1 releases"):
        combined([release_of], [1.0, 1.0])


def test_the_heads_threshold_is_the_federations_mean_record_whatever_the_prior() -> None:
    """Training's input is centred on the release's mean record; the head starts unbiased there.

    Node effects (two languages) and a prior far from every record move the class directions,
    never the threshold. A bias that training must unlearn moves slowly: each person's clipped
    gradient gives it a share of one over the feature norm. On the book reviews per person
    (issue 27) a standardised bias of 1.7 kept every prediction on one class for five rounds.
    """
    generator = torch.Generator().manual_seed(11)
    width, classes = 64, 2
    centres = torch.eye(classes, width)
    nodes = []
    for language in range(2):
        labels = torch.randint(0, classes, (300,), generator=generator)
        offset = 2.0 * torch.eye(width)[10 + language]
        noise = 0.3 * torch.randn(300, width, generator=generator)
        nodes.append((centres[labels] + offset + noise, labels))
    statistics = combined(
        [
            release(f, y, classes=classes, noise_multiplier=1.0, generator=generator)
            for f, y in nodes
        ],
        [1.0, 1.0],
    )
    far = unit_rows(torch.randn(classes, width, generator=generator))
    centre = prototypes.feature_mean(statistics)
    for prior in (None, far):
        weight, bias = head_weights(statistics, prior)
        _, standard = prototypes.standardized(weight, bias, centre, torch.ones(width))
        assert torch.allclose(standard, torch.zeros(classes), atol=1e-5), (prior, standard)
