"""Person-level DP: one person's influence on every update kind is bounded by the clip.

The per-person gradient Opacus' per-row gradients are summed into is checked against a direct
computation (autograd on each person's mean loss, one person at a time), for every update kind
DP-SGD trains; records beyond the cap must never reach the update; and the prototypes release
weighs each person's records so that the whole person moves it by at most its sensitivity.
"""

from __future__ import annotations

import pytest
import torch
from tiny_gradients import clipped_sum, tiny_without_dropout
from tiny_gradients import flat_grad as _flat_grad
from tiny_gradients import logits as _logits
from torch.utils.data import DataLoader, TensorDataset

from residency.client.randomness import RoundRandomness
from residency.client.trainer import GradSampleMode, LocalSchedule, train_dp_round
from residency.common.config.kinds import AccountantKind, UpdateKind
from residency.common.device import Compute
from residency.common.privacy.dp_sgd import DpSgdSettings, make_private
from residency.common.privacy.people import People, PeopleData, collate_people
from residency.common.updates import prototypes
from residency.common.updates.traits import traits_for

pytestmark = pytest.mark.unit

LABELS = ("a", "b", "c")
WIDTH = 12
OWNERS = ("ana", "ana", "bo", "cy", "cy", "cy", "cy", "dee", "bo", "cy")  # cy: 5 records
CAP = 3
TRAINED = [update for update in UpdateKind if not traits_for(update).is_release]


def _model(update: UpdateKind) -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_without_dropout(update, LABELS)


def _records(count: int = len(OWNERS), seed: int = 7) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (count, WIDTH), generator=generator)
    lengths = torch.randint(2, WIDTH + 1, (count,), generator=generator)
    mask = (torch.arange(WIDTH).unsqueeze(0) < lengths.unsqueeze(1)).long()
    labels = torch.randint(0, len(LABELS), (count,), generator=generator)
    return TensorDataset(ids * mask, mask, labels)


def _person_grads(model: torch.nn.Module, data: PeopleData) -> list[torch.Tensor]:
    """The reference: each person's mean cross-entropy over their kept rows, differentiated."""
    grads = []
    for index in range(len(data)):
        ids, mask, labels = data[index]
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(_logits(model, ids, mask), labels).backward()
        grads.append(_flat_grad(model))
    model.zero_grad(set_to_none=True)
    return grads


def test_people_keep_their_first_records_up_to_the_cap() -> None:
    people = People.of(OWNERS, CAP)
    assert people.rows == ((0, 1), (2, 8), (3, 4, 5), (7,))
    assert people.kept_rows == [0, 1, 2, 8, 3, 4, 5, 7]
    with pytest.raises(ValueError, match="at least 1"):
        People.of(OWNERS, 0)


@pytest.mark.parametrize("update", TRAINED)
def test_each_person_is_clipped_once_as_a_direct_computation_says(update: UpdateKind) -> None:
    model = _model(update)
    data = PeopleData(_records(), People.of(OWNERS, CAP))
    per_person = _person_grads(model, data)
    norms = torch.stack([g.norm() for g in per_person])
    clip = float(norms.median())  # some people clipped, some not
    assert (norms > clip * 1.01).any()
    assert (norms < clip * 0.99).any()
    expected_batch = 2.0
    reference = clipped_sum(per_person, clip)
    reference = reference / expected_batch

    params = [p for p in model.parameters() if p.requires_grad]
    private = make_private(
        model,
        torch.optim.SGD(params, lr=1.0),
        DataLoader(data, batch_size=2, collate_fn=collate_people),
        dp=DpSgdSettings(
            noise_multiplier=0.0,
            max_grad_norm=clip,
            accountant=AccountantKind.RDP,
            grad_sample_mode=GradSampleMode.HOOKS,
        ),
        history=(),
        noise_generator=torch.Generator().manual_seed(3),
        expected_batch=expected_batch,
    )
    ids, mask, labels, owners = collate_people([data[i] for i in range(len(data))])
    loss = private.backward(_logits(private.model, ids, mask), labels, owners)
    assert private.optimizer.pre_step()  # per person: sum rows, clip, add (zero) noise, divide
    got = _flat_grad(model)
    private.model._close()

    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))
    assert private.log.rows == len(data)  # the mechanism log counts people, not rows
    with torch.no_grad():
        per_row = torch.nn.functional.cross_entropy(
            _logits(model, ids, mask), labels, reduction="none"
        )
    means = [float(per_row[owners == p].mean()) for p in range(len(data))]
    assert loss == pytest.approx(sum(means) / len(means), rel=1e-5)


def _round(
    update: UpdateKind,
    records: TensorDataset,
    owners: tuple[str, ...],
    mode: GradSampleMode = GradSampleMode.HOOKS,
) -> torch.Tensor:
    """One seeded person-level round on the tiny BERT; its trained weights, flattened."""
    model = _model(update)
    outcome = train_dp_round(
        model,
        records,
        schedule=LocalSchedule(epochs=2, batch_size=2, learning_rate=1e-2),
        dp=DpSgdSettings(1.0, 1.0, AccountantKind.RDP, mode),
        history=(),
        compute=Compute(torch.device("cpu"), bf16=False),
        randomness=RoundRandomness.reproducible(5, server_round=1),
        public_records=4,
        people=People.of(owners, CAP),
    )
    assert outcome.steps == 2 * 2  # four public people, two a batch: the rate is 1/2
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def test_ghost_clipping_refuses_people() -> None:
    with pytest.raises(ValueError, match="hooks mode"):
        _round(UpdateKind.FULL, _records(), OWNERS, GradSampleMode.GHOST)


@pytest.mark.parametrize("update", [UpdateKind.HEAD, UpdateKind.LORA])
def test_records_beyond_the_cap_never_change_the_update(update: UpdateKind) -> None:
    records = _records()
    extra = _records(count=3, seed=11)  # three more records of cy, who already has CAP
    more = TensorDataset(
        *(torch.cat([a, b]) for a, b in zip(records.tensors, extra.tensors, strict=True))
    )
    before = _round(update, records, OWNERS)
    after = _round(update, more, (*OWNERS, "cy", "cy", "cy"))
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    changed = _round(update, more, (*OWNERS, "eve", "eve", "eve"))  # a new person: it may move
    assert not torch.equal(changed, before)


def test_one_person_moves_the_release_by_at_most_its_sensitivity() -> None:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(60, 8, generator=generator)
    labels = torch.randint(0, 3, (60,), generator=generator)
    owners = [f"p{i}" for i in range(10)] + ["heavy"] * 50  # one person, 50 records
    people = People.of(owners, 50)
    kept = torch.tensor(people.kept_rows)
    with_heavy = prototypes.class_statistics(
        features[kept], labels[kept], 3, weights=people.kept_weights()
    )
    others = torch.arange(10)
    without = prototypes.class_statistics(features[others], labels[others], 3)
    moved = torch.cat(
        [
            (with_heavy[0] - without[0]).flatten(),
            (with_heavy[1] - without[1]) * prototypes.COUNT_WEIGHT,
        ]
    )
    assert float(moved.norm()) <= prototypes.SENSITIVITY + 1e-9
    assert float(with_heavy[1].sum()) == pytest.approx(11.0)  # each person counts once
