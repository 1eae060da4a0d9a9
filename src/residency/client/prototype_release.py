"""The node's side of ``update = "prototypes"``: encode once, release the class statistics once.

The mechanism itself (normalise, clip, sum per class, add Gaussian noise of std ``z`` times
the sensitivity) is :func:`residency.common.updates.prototypes.release`, the one the canary
audit runs; this module feeds it the features the classifier head reads and the node's secret
noise stream.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from residency.client.linear_probe import head_features
from residency.client.randomness import RoundRandomness
from residency.common.classifier_head import classifier_head
from residency.common.device import Compute
from residency.common.privacy.mechanism_log import MechanismLog
from residency.common.privacy.people import People
from residency.common.updates import prototypes


def release_prototypes(
    model: torch.nn.Module,
    data: TensorDataset,
    *,
    classes: int,
    noise_multiplier: float,
    compute: Compute,
    randomness: RoundRandomness,
    log: MechanismLog | None = None,
    people: People | None = None,
) -> dict[str, np.ndarray]:
    """The noisy class sums and counts of ``data`` (token rows) under ``model``'s encoder.

    The encoder runs in eval mode (no dropout), so each record's features are a fixed
    function of its text; the noise is drawn on the CPU from ``randomness``' noise seed.
    ``log`` gets the release as one batch (its rows' statistics within ``rows x``
    the sensitivity) and one noisy step.

    With ``people`` (person-level DP) only the rows people keep are encoded, each of a
    person's ``n`` weighing ``1 / n``: one person moves the release as much as one record
    does at record level, so the sensitivity, the noise and the charge are the same.
    """
    weights = None
    if people is not None:
        data = people.kept(data)
        weights = people.kept_weights()
    features = head_features(model, classifier_head(model), data, compute=compute)
    vectors, labels = features.tensors
    if log is not None:
        units = len(vectors) if people is None else len(people)
        log.batch(units)
        sums, counts = prototypes.class_statistics(vectors, labels, classes, weights=weights)
        joint = float(torch.cat([sums.flatten(), counts * prototypes.COUNT_WEIGHT]).norm())
        log.clipped([units], joint, prototypes.SENSITIVITY)
        log.noised(prototypes.noise_std(noise_multiplier), [])
    return prototypes.release(
        vectors,
        labels,
        classes=classes,
        noise_multiplier=noise_multiplier,
        generator=randomness.noise_generator(torch.device("cpu")),
        weights=weights,
    )
