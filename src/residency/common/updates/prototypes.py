"""``update = "prototypes"``: a one-shot DP classifier from per-class feature statistics.

Each node runs the frozen encoder once, L2-normalises every record's pooled features and
clips them to norm 1 (explicitly, in float64: rounding must not raise a record's weight), and
releases once, with the Gaussian mechanism, per-class sums of those vectors and per-class
counts weighted by :data:`COUNT_WEIGHT`. Under add/remove adjacency one record moves one
class's sum by at most 1 and one weighted count by ``COUNT_WEIGHT``, so the release's L2
sensitivity is :data:`SENSITIVITY` and the noise std on every released number is
``z * SENSITIVITY``, with ``z`` from Opacus for one step at sample rate 1. That is exactly one
DP-SGD step of noise multiplier ``z`` at ``q = 1`` and clipping norm ``SENSITIVITY``, so the
accountants, the signed record and the audit treat it as such.

The coordinator sums the releases (noise adds up over nodes, the signal too) and sets the
classifier head to a cosine classifier of the noisy class means, with what the nodes share
whatever the class (a language, a site) separated from what their label mixes make them
differ by, and projected out (:func:`head_weights`): the head reads the normalised features,
so its logits are ``TEMPERATURE`` times a cosine.

Weighting the counts by 0.3 (sensitivity 1.044) rather than 1 (1.414, what releasing counts
and sums at equal weight costs) lowers the noise on the sums by 26%; counts are large, so
their extra noise costs nothing. Measured on the demo's features (400 notes x 3 countries,
MiniLM, 20 draws, global centring): 0.729 / 0.698 / 0.506 at epsilon 8 / 3 / 1 against
0.721 / 0.674 / 0.425 at weight 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from opacus.optimizers.optimizer import _generate_noise

from residency.common.classifier_head import classifier_head
from residency.common.errors import InvalidUpdate
from residency.common.updates.traits import COUNT_WEIGHT as COUNT_WEIGHT
from residency.common.updates.traits import SENSITIVITY as SENSITIVITY

TEMPERATURE = 10.0
"""Scale of the cosine logits: it changes the softmax's confidence, never the prediction."""

NODE_EFFECT_SHARE = 0.1
"""Node effects below this share of the class effects (record-weighted variances) are read as
the additive fit's sampling error, and the head uses the pooled class means. Measured
(``bench/pipeline_replay.py``, docs/performance.md): the share is 0.005 to 0.08 where nodes
differ only by label mix (tweets, spam, BBC without noise), where pooled means win by up to
1.8 points, and 1.6 to 90 where nodes write other languages (demo notes, book reviews), where
projecting the node effects out wins by 10 to 30."""

PRIOR_SHARE_OF_NOISE = 0.5
"""What a class's public prior (its name, embedded) counts as, in records: this share of the
noise on the class's released sum, measured in records (:func:`prior_records`)."""

SUMS = "prototypes.sums"
COUNTS = "prototypes.counts"
NODE_MEANS = "prototypes.node-means"
NODE_COUNTS = "prototypes.node-counts"
NOISE_STDS = "prototypes.noise-stds"


def template(classes: int, width: int) -> dict[str, np.ndarray]:
    """The arrays a release consists of, zero: what the coordinator sends and checks against."""
    return {
        SUMS: np.zeros((classes, width), dtype=np.float32),
        COUNTS: np.zeros((classes,), dtype=np.float32),
    }


def check_template(received: Mapping[str, np.ndarray], classes: int, width: int) -> None:
    """Raise ``ValueError`` unless ``received`` is exactly the release's zero template.

    The node checks before it charges: a release whose template the egress guard would not
    let out (other names or shapes) must not be paid for.
    """
    expected = template(classes, width)
    if set(received) != set(expected):
        raise ValueError(
            f"release template names {sorted(received)[:3]}, expected {sorted(expected)}"
        )
    for name, value in expected.items():
        got = np.asarray(received[name])
        if got.shape != value.shape or got.dtype != value.dtype:
            raise ValueError(
                f"{name}: {got.dtype}{list(got.shape)} != {value.dtype}{list(value.shape)}"
            )


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    """Each row scaled to L2 norm 1 (zero rows stay zero), then clipped to norm at most 1.

    In float64: the clip runs after the normalisation so that no rounding of it can leave a
    row above the norm the sensitivity assumes. A row with a NaN or infinite entry counts as
    a zero row (its record still counts in its class): a NaN there would make the whole
    release NaN, an outcome that tells whether that one record is in the data.
    """
    rows = features.detach().to(torch.float64)
    finite = torch.isfinite(rows).all(dim=1, keepdim=True)
    rows = torch.where(finite, rows, torch.zeros_like(rows))
    rows = rows / _nonzero(rows.norm(dim=1, keepdim=True))
    return rows * (1.0 / _nonzero(rows.norm(dim=1, keepdim=True))).clamp(max=1.0)


def _nonzero(norms: torch.Tensor) -> torch.Tensor:
    return torch.where(norms > 0, norms, torch.ones_like(norms))


def class_statistics(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    *,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums of the unit rows and per-class counts (float64, before any noise).

    ``weights`` (person-level DP): each row's weight in [0, 1], ``1 / n`` for each of a
    person's ``n`` rows, so that one person adds at most what one record adds at weight 1
    and the release's sensitivity stays :data:`SENSITIVITY`.
    """
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {tuple(features.shape)} do not match {len(labels)} labels")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"labels must lie in [0, {classes})")
    if weights is None:
        weights = torch.ones(len(labels), dtype=torch.float64)
    weights = weights.to(torch.float64)
    if weights.shape != labels.shape or bool(((weights < 0) | (weights > 1)).any()):
        raise ValueError("weights must be one value in [0, 1] per row")
    rows = unit_rows(features) * weights.unsqueeze(1)
    index = labels.to(torch.long)
    sums = torch.zeros((classes, rows.shape[1]), dtype=torch.float64).index_add_(0, index, rows)
    counts = torch.zeros(classes, dtype=torch.float64).index_add_(0, index, weights)
    return sums, counts


def noise_std(noise_multiplier: float) -> float:
    """The standard deviation of the noise on every released number."""
    return noise_multiplier * SENSITIVITY


def release(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    classes: int,
    noise_multiplier: float,
    generator: torch.Generator | None,
    weights: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """The node's one release: noisy class sums and noisy counts (already divided back).

    The sums and the weighted counts are one vector of sensitivity :data:`SENSITIVITY`; its
    noise is Opacus' own Gaussian draw in secure mode (four draws, summed and halved) from
    ``generator``, the node's secret noise stream. ``weights``: see :func:`class_statistics`.
    """
    sums, counts = class_statistics(features, labels, classes, weights=weights)
    joint = torch.cat([sums.flatten(), counts * COUNT_WEIGHT])
    noise = _generate_noise(
        std=noise_std(noise_multiplier),
        reference=joint,
        generator=generator,
        secure_mode=True,
    )
    noisy = joint + noise
    width = sums.shape[1]
    return {
        SUMS: noisy[: classes * width].reshape(classes, width).numpy().astype(np.float32),
        COUNTS: (noisy[classes * width :] / COUNT_WEIGHT).numpy().astype(np.float32),
    }


def combined(
    releases: list[dict[str, np.ndarray]], noise_multipliers: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """The federation's statistics: every node's release summed, and each node's own means.

    The per-node parts let the coordinator separate what differs between institutions
    (language, site) from what differs between classes (:func:`head_weights`); they are
    post-processing of what each node released, so they cost no privacy. Each node's noise
    multiplier (public: its reply and signed record carry it), when given, sets how much the
    class names' prior weighs (:func:`prior_records`).
    """
    if not releases:
        raise ValueError("no release to combine")
    sums = np.stack([np.asarray(r[SUMS], dtype=np.float64) for r in releases])
    counts = np.stack([np.asarray(r[COUNTS], dtype=np.float64) for r in releases])
    noise: dict[str, np.ndarray] = {}
    if noise_multipliers is not None:
        if len(noise_multipliers) != len(releases):
            raise ValueError(
                f"{len(noise_multipliers)} noise multipliers for {len(releases)} releases"
            )
        stds = [noise_std(z) for z in noise_multipliers]
        noise[NOISE_STDS] = np.asarray(stds, dtype=np.float32)
    return noise | {
        SUMS: sums.sum(axis=0).astype(np.float32),
        COUNTS: counts.sum(axis=0).astype(np.float32),
        NODE_MEANS: (sums.sum(axis=1) / np.maximum(counts.sum(axis=1), 1.0)[:, None]).astype(
            np.float32
        ),
        NODE_COUNTS: counts.astype(np.float32),
    }


Release = tuple[dict[str, np.ndarray], float | None]
"""One node's release and the noise multiplier it reported (None: unknown)."""


def refined(first: Release, second: Release) -> Release:
    """One node's two releases as one: averaged by the inverse of their noise variances.

    Both are the same statistics plus independent Gaussian noise, so this is the least-noise
    unbiased combination, with noise multiplier ``(z1^-2 + z2^-2)^-1/2``: what a single
    release spending both budgets would have had. Post-processing; without both noise
    multipliers the two are averaged equally and the result's noise is unknown.
    """
    (one, z_one), (two, z_two) = first, second
    if z_one is None or z_two is None:
        w_one = w_two = 0.5
        noise = None
    else:
        precision = z_one**-2 + z_two**-2
        w_one, w_two = z_one**-2 / precision, z_two**-2 / precision
        noise = precision**-0.5
    merged = {
        name: (w_one * np.asarray(one[name], dtype=np.float64) + w_two * np.asarray(value)).astype(
            np.float32
        )
        for name, value in two.items()
    }
    return merged, noise


def head_weights(
    statistics: dict[str, np.ndarray], prior: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of the cosine classifier of the noisy class means.

    Node means differ for two reasons: the nodes hold other label mixes, and their records
    differ whatever the class (language, site). :func:`class_and_node_effects` separates the
    two from the released statistics alone. Where the node effects are real (their variance
    at least :data:`NODE_EFFECT_SHARE` of the class effects'), each class direction is its
    class effect minus the federation's mean with the node-effect directions projected out,
    so that a record scores by its class and not by where it was written; otherwise the
    directions are the pooled class means', which the fit's sampling error would only blur.
    Centring each class within its own node (the head before this one) read every
    difference between node means as a site effect and projected class signal out where
    nodes share a language (0.861 against 0.948 for global class means on the BBC corpus
    without noise; docs/performance.md). A noisy count below zero is read as zero. The bias
    centres every score on the federation's mean record (:func:`feature_mean`), so a record
    scores by how it deviates from it, and training, whose input is centred there too, starts
    from a head whose threshold is where its features are zero: a bias it would have to
    unlearn moves slowly, as each person's clipped gradient gives the bias a share of one
    over the feature norm. ``prior``: each class's public prior (its name embedded,
    :mod:`residency.common.label_prior`), counted as :func:`prior_records` records of its
    class that belong to no node; it shapes the class directions, never the threshold, as
    no record lies where the names do.
    """
    means, offsets, counts = class_and_node_effects(statistics, prior)
    sums, prior_weight = _class_sums(statistics, prior)
    per_class = counts.sum(dim=0) + prior_weight
    overall = (per_class @ means) / per_class.sum().clamp_min(1e-12)
    class_effects = float(per_class @ (means - overall).square().sum(dim=1))
    node_effects = float(counts.sum(dim=1) @ offsets.square().sum(dim=1))
    if len(offsets) > 1 and node_effects >= NODE_EFFECT_SHARE * class_effects:
        deviations = means - overall
        basis, singular, _ = torch.linalg.svd(offsets.T, full_matrices=False)
        basis = basis[:, singular > 1e-9 * singular.max().clamp_min(1e-300)]
        deviations = deviations - (deviations @ basis) @ basis.T
    else:
        deviations = sums / per_class.clamp_min(1.0)[:, None] - overall
    directions = deviations / deviations.norm(dim=1, keepdim=True).clamp_min(1e-12)
    weight = TEMPERATURE * directions
    bias = -(weight @ feature_mean(statistics))
    return weight.float(), bias.float()


def prior_records(statistics: dict[str, np.ndarray]) -> float:
    """How many records each class's public prior counts as: half the noise on a class sum.

    A class's pooled noisy sum carries Gaussian noise of norm about ``sqrt(sum of the nodes'
    variances x width)`` in units of records (a record adds a unit vector). A prior weighed
    so is decisive where the noise outweighs a class's records and vanishes without noise,
    so a release with little noise is never pulled towards names that say little (the
    Wikipedia hedges' "certain" and "uncertain": 0.684 against 0.707 without noise at a
    fixed 50 records). Zero when :func:`combined` was not told the noise.
    """
    stds = statistics.get(NOISE_STDS)
    if stds is None:
        return 0.0
    width = np.asarray(statistics[SUMS]).shape[1]
    variance = float(np.square(np.asarray(stds, dtype=np.float64)).sum())
    return PRIOR_SHARE_OF_NOISE * math.sqrt(variance * width)


def class_and_node_effects(
    statistics: dict[str, np.ndarray], prior: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(class means, node offsets, counts)``: the additive model ``mean(n, c) = mu_c + o_n``.

    Fitted by least squares on the released sums, each record weighted equally: its normal
    equations need only each class's sum over nodes, each node's sum over classes and the
    per-node counts, all post-processing of the releases. The offsets are shifted to average
    zero over the federation's records, so the class means are those of the average node.
    Where label mixes alone make the node means differ, the offsets come out near zero and
    the class means are the global ones; where nodes write other languages, the offsets
    take the languages. Float64; ``counts`` is nodes x classes, clamped at zero.
    """
    sums, prior_weight = _class_sums(statistics, prior)  # the prior's records are at no node
    node_means = torch.from_numpy(np.asarray(statistics[NODE_MEANS], dtype=np.float64))
    raw_counts = torch.from_numpy(np.asarray(statistics[NODE_COUNTS], dtype=np.float64))
    classes, width = sums.shape
    nodes = len(node_means)
    if node_means.shape[1:] != (width,) or raw_counts.shape != (nodes, classes):
        raise InvalidUpdate("class statistics of inconsistent shapes")
    counts = raw_counts.clamp_min(0.0)
    node_sums = node_means * raw_counts.sum(dim=1).clamp_min(1.0)[:, None]  # as combined()
    per_class, per_node = counts.sum(dim=0), counts.sum(dim=1)
    normal = torch.zeros((classes + nodes, classes + nodes), dtype=torch.float64)
    normal[:classes, :classes] = torch.diag(per_class + prior_weight)
    normal[:classes, classes:] = counts.T
    normal[classes:, :classes] = counts
    normal[classes:, classes:] = torch.diag(per_node)
    solution = torch.linalg.pinv(normal, hermitian=True) @ torch.cat([sums, node_sums])
    means, offsets = solution[:classes], solution[classes:]
    shift = (per_node @ offsets) / per_node.sum().clamp_min(1e-12)
    return means + shift, offsets - shift, counts


def _class_sums(
    statistics: dict[str, np.ndarray], prior: torch.Tensor | None
) -> tuple[torch.Tensor, float]:
    """Each class's released sum with its prior's records added, and how many those are."""
    sums = torch.from_numpy(np.asarray(statistics[SUMS], dtype=np.float64))
    if prior is None:
        return sums, 0.0
    if prior.shape != sums.shape:
        raise InvalidUpdate(f"class prior {tuple(prior.shape)} != {tuple(sums.shape)}")
    weight = prior_records(statistics)
    return sums + weight * prior.double(), weight


def _overall(node_means: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    total = weights.sum(dim=1)
    return (total[:, None] * node_means).sum(dim=0) / total.sum().clamp_min(1.0)


def feature_mean(statistics: dict[str, np.ndarray]) -> torch.Tensor:
    """The federation's mean normalised feature, from the noisy statistics (float64)."""
    node_means = torch.from_numpy(np.asarray(statistics[NODE_MEANS], dtype=np.float64))
    node_counts = torch.from_numpy(np.asarray(statistics[NODE_COUNTS], dtype=np.float64))
    return _overall(node_means, node_counts.clamp_min(0.0))


def standardized(
    weight: torch.Tensor, bias: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same classifier for standardised input ``(x - centre) / scale``: same logits."""
    weight, bias = weight.double(), bias.double()
    return (weight * scale.double()).float(), (bias + weight @ centre.double()).float()


def set_head(
    model: torch.nn.Module,
    statistics: dict[str, np.ndarray],
    prior: torch.Tensor | None = None,
) -> None:
    """Make ``model``'s classifier head the class-mean classifier of ``statistics``.

    ``prior``: each class's public prior (:mod:`residency.common.label_prior`), if any.
    """
    head = classifier_head(model)
    weight, bias = head_weights(statistics, prior)
    if weight.shape != head.weight.shape:
        raise InvalidUpdate(
            f"class statistics {tuple(weight.shape)} != head {tuple(head.weight.shape)}"
        )
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(bias.to(head.bias.dtype))
