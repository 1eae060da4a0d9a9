"""Where a warm-started job centres the head's input: the release's mean and the held-out texts'.

After a prototypes release, training reads standardised features ``(x - centre) / scale``
and the release's head puts its threshold at the centre. The release's own mean record is
noisy: each node adds the same noise whatever its size, so with a few hundred records or
people per country at epsilon 1 it is off by about half the features' spread in every
dimension. Every training step then starts from a displaced input, and training cannot move
the head's bias far (one unit's clipped gradient gives the bias one part in the norm of its
standardised features, about 20 for MiniLM).

The coordinator also holds texts of the task: the held-out part of its test set. Their mean
record is a second estimate, with sampling error instead of noise. Each dimension's centre
is the two averaged by the inverse of their variances: the release's from the noise its
nodes state (``prototypes.NOISE_STDS``), the texts' from their spread and count. Where the
release is precise (thousands of records, epsilon 8) the centre stays near the release's;
where it is noisy it moves to the texts'. Both inputs are already the coordinator's: the centre
is post-processing of what the nodes released, so it costs them no privacy.

It assumes the coordinator's test set stands for the nodes' records, as the held-out choice
of round already does (``server/held_out.py``); nothing checks it. A test of the two means
against their variances was tried and not kept: small nodes' noisy counts make the release's
mean heavier-tailed than its stated noise says, so texts from the nodes' own distribution
read as unlike in the noisiest federations, where they help most. The cost of texts from
elsewhere, measured: book reviews centring a BBC news federation cost up to 3 points against
the release's centre, and still gain 23 where the release is noisiest (docs/performance.md,
"A third change: training's centre", where every regime is measured with
``bench/pipeline_replay.py`` and ``bench/person_level.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from residency.common.config.round_plan import FEATURE_CENTRE_BOUND
from residency.common.updates import prototypes


def training_centre(
    statistics: dict[str, np.ndarray], held_out: torch.Tensor | None
) -> torch.Tensor:
    """Training's centre (float64): the release's mean and ``held_out``'s, by precision.

    ``held_out``: the unit-norm features of the coordinator's held-out texts, or None. Without
    them (or with fewer than two), or where a node did not state its noise, the centre is the
    release's mean record alone. Clamped to the bound a node accepts.
    """
    bound = FEATURE_CENTRE_BOUND  # a mean of unit vectors; only the noise reaches past it
    release = prototypes.feature_mean(statistics).clamp(-bound, bound)
    if held_out is None or len(held_out) < 2 or prototypes.NOISE_STDS not in statistics:
        return release
    texts = prototypes.unit_rows(held_out.double())
    stds = np.asarray(statistics[prototypes.NOISE_STDS], dtype=np.float64)
    counts = np.asarray(statistics[prototypes.NODE_COUNTS], dtype=np.float64)
    total = max(float(counts.clip(min=0.0).sum()), 1.0)
    # the noise on the summed class sums over the (noisy) number of records they hold
    release_var = float(np.square(stds).sum()) * counts.shape[1] / total**2
    texts_var = texts.var(dim=0) / len(texts)
    share = release_var / (release_var + texts_var.clamp_min(1e-30))
    centre: torch.Tensor = share * texts.mean(dim=0) + (1.0 - share) * release
    return centre.clamp(-bound, bound)
