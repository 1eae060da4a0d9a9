"""The release's public prior: each label's name through the frozen encoder."""

from __future__ import annotations

import pytest
import torch

from residency.common.config.kinds import UpdateKind
from residency.common.device import pick_compute
from residency.common.label_prior import label_prior
from residency.common.model import ModelSpec, build_classifier, load_tokenizer

pytestmark = pytest.mark.unit


def test_each_label_gets_the_unit_row_the_encoder_gives_its_name() -> None:
    labels = ("cardiology", "neurology", "oncology")
    spec = ModelSpec(source="tiny", labels=labels, update=UpdateKind.PROTOTYPES)
    model, tokenizer = build_classifier(spec), load_tokenizer("tiny")
    prior = label_prior(model, tokenizer, labels, compute=pick_compute())
    assert prior.shape == (3, model.config.hidden_size)
    assert prior.dtype == torch.float64
    assert torch.allclose(prior.norm(dim=1), torch.ones(3, dtype=torch.float64))
    again = label_prior(
        model, tokenizer, ("Cardiology", "neurology", "oncology"), compute=pick_compute()
    )
    assert torch.equal(prior, again)  # names are read in lower case
    assert not torch.allclose(prior[0], prior[1])
