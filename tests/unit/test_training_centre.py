"""Training's centre after a release: the release's mean and the held-out texts', by precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from residency.common.classifier_head import classifier_head
from residency.common.config.kinds import Combine
from residency.common.config.round_plan import FEATURE_CENTRE_BOUND, RoundPlan
from residency.common.head_input import encoder_features
from residency.common.updates import prototypes
from residency.server.global_model import GlobalModel
from residency.server.strategy import ValidatingStrategy
from residency.server.training_centre import training_centre
from toy_federation import WIDTH
from warm_start_job import warm_start_job

pytestmark = pytest.mark.unit

CLASSES = 3


def _records(count: int, generator: torch.Generator, offset: float = 0.3) -> torch.Tensor:
    """Unit-norm rows around a common direction, as an encoder's features lie."""
    rows = offset + 0.2 * torch.randn((count, WIDTH), generator=generator, dtype=torch.float64)
    return prototypes.unit_rows(rows)


def _statistics(
    parts: list[torch.Tensor], z: float, generator: torch.Generator, *, stated: bool = True
) -> dict[str, np.ndarray]:
    """The federation's statistics from one release per part at noise multiplier ``z``."""
    releases = [
        prototypes.release(
            x,
            torch.arange(len(x)) % CLASSES,
            classes=CLASSES,
            noise_multiplier=z,
            generator=generator,
        )
        for x in parts
    ]
    return prototypes.combined(releases, [z] * len(releases) if stated else None)


def test_without_held_out_texts_or_stated_noise_the_centre_is_the_releases_mean() -> None:
    generator = torch.Generator().manual_seed(0)
    parts = [_records(200, generator), _records(300, generator)]
    texts = _records(100, generator)
    stated = _statistics(parts, 2.0, generator)
    unstated = _statistics(parts, 2.0, generator, stated=False)

    for statistics, held_out in ((stated, None), (stated, texts[:1]), (unstated, texts)):
        expected = prototypes.feature_mean(statistics).clamp(
            -FEATURE_CENTRE_BOUND, FEATURE_CENTRE_BOUND
        )
        torch.testing.assert_close(training_centre(statistics, held_out), expected)


def test_each_dimension_leans_on_the_estimate_with_less_variance() -> None:
    generator = torch.Generator().manual_seed(1)
    parts = [_records(400, generator), _records(400, generator)]
    texts = _records(300, generator)
    release_mean = prototypes.feature_mean
    texts_mean = texts.mean(dim=0)

    precise = _statistics(parts, 1e-4, generator)  # the release all but exact
    torch.testing.assert_close(
        training_centre(precise, texts), release_mean(precise), atol=1e-5, rtol=0
    )
    noisy = _statistics(parts, 1e4, generator)  # the release all noise
    torch.testing.assert_close(training_centre(noisy, texts), texts_mean, atol=1e-3, rtol=0)


def test_by_precision_the_centre_is_nearer_the_records_mean_than_either_estimate() -> None:
    """Over fresh draws, the squared error to the nodes' true mean record is the smallest."""
    generator = torch.Generator().manual_seed(2)
    errors: dict[str, list[float]] = {"release": [], "texts": [], "combined": []}
    for _ in range(40):
        parts = [_records(150, generator), _records(100, generator), _records(250, generator)]
        truth = torch.cat(parts).mean(dim=0)
        texts = _records(120, generator)
        statistics = _statistics(parts, 3.0, generator)
        for name, centre in (
            ("release", prototypes.feature_mean(statistics)),
            ("texts", texts.mean(dim=0)),
            ("combined", training_centre(statistics, texts)),
        ):
            errors[name].append(float((centre - truth).square().sum()))
    mean_error = {name: float(np.mean(values)) for name, values in errors.items()}
    assert mean_error["combined"] < 0.9 * min(mean_error["release"], mean_error["texts"])


def test_the_centre_stays_within_the_bound_a_node_accepts() -> None:
    """A release whose mean record lies past the bound (only noise puts it there) is clamped."""
    far = {
        prototypes.SUMS: np.full((CLASSES, WIDTH), 10.0, np.float32),
        prototypes.COUNTS: np.ones(CLASSES, np.float32),
    }
    statistics = prototypes.combined([far], [1e-6])  # precise: the release's mean weighs most
    assert float(prototypes.feature_mean(statistics).min()) > FEATURE_CENTRE_BOUND
    centre = training_centre(statistics, _records(50, torch.Generator().manual_seed(3)))
    torch.testing.assert_close(
        centre, torch.full((WIDTH,), FEATURE_CENTRE_BOUND, dtype=torch.float64)
    )


@pytest.mark.parametrize("validation_share", [None, 0.0])
def test_the_warm_start_sends_training_centre_and_a_head_whose_threshold_is_there(
    tmp_path: Path, validation_share: float | None
) -> None:
    """The coordinator's first training round: the transform it sends and the head it starts.

    With a held-out part the centre mixes in its texts; without one (``validation_share =
    0``) it is the release's mean. Either way every class scores alike at the centre.
    """
    job = warm_start_job(tmp_path)
    if validation_share is not None:
        job = job.model_copy(
            update={"data": job.data.model_copy(update={"validation_share": validation_share})}
        )
    model = GlobalModel(job, None, ValidatingStrategy(combine=Combine.PROTOTYPES))
    generator = torch.Generator().manual_seed(4)
    statistics = _statistics([_records(60, generator)], 5.0, generator)

    model.absorb(ArrayRecord({name: Array(value) for name, value in statistics.items()}))

    held_out = None
    if model.held_out is not None:
        held_out = encoder_features(model.model, model.held_out, compute=model.compute, public=True)
    assert (held_out is None) == (validation_share == 0.0)
    expected = training_centre(statistics, held_out).float()
    plan = RoundPlan.from_record(dict(model.config) | {"server-round": 2})
    assert plan.centre_and_scale is not None
    sent_centre = torch.from_numpy(np.array(plan.centre_and_scale[0]))
    torch.testing.assert_close(sent_centre, expected)
    if held_out is not None:
        assert not torch.allclose(sent_centre, prototypes.feature_mean(statistics).float())
    assert model.strategy.combine is Combine.FEDAVG
    head = classifier_head(model.model)
    assert float(head.bias.detach().abs().max()) == 0.0
    assert float(head.weight.detach().abs().max()) > 0.0
