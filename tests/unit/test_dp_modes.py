"""Every DP mode against a batch-size-1 reference: clipped sum, noise scale, empty batches.

Opacus' own tests check per-sample gradients against a loop over single examples; these do
the same for the whole mechanism as the trainer drives it (``make_private`` and
``PrivateTraining.backward``), on the tiny BERT, for every update kind and clipping mode.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_gradients import clipped_sum, tiny_without_dropout
from tiny_gradients import flat_grad as _flat_grad
from tiny_gradients import logits as _logits
from torch.utils.data import DataLoader, TensorDataset

from residency.client.mechanism_check import checked
from residency.client.randomness import RoundRandomness
from residency.client.trainer import GradSampleMode, LocalSchedule, dp_mode_for, train_dp_round
from residency.common.config.kinds import AccountantKind, UpdateKind
from residency.common.device import Compute
from residency.common.model import Pooling
from residency.common.privacy.dp_sgd import (
    DpSgdSettings,
    PrivateTraining,
    forward_precision,
    make_private,
    noise_only_step,
)
from residency.common.privacy.sampling import poisson_schedule
from residency.common.updates.traits import traits_for

pytestmark = pytest.mark.unit

LABELS = ("a", "b", "c")
EXAMPLES = 8
LOADER_BATCH = 4  # Opacus' expected batch size: EXAMPLES / (EXAMPLES / LOADER_BATCH)
WIDTH = 12  # stored width; no example uses all of it, so trimming slices
# Every kind trained by DP-SGD; a one-shot release takes no gradient (test_prototypes.py).
CASES = [
    (update, mode)
    for update in UpdateKind
    if not traits_for(update).is_release
    for mode in GradSampleMode
]
HEADS = [Pooling.CLS, Pooling.MEAN]


def _model(update: UpdateKind, pooling: Pooling = Pooling.CLS) -> torch.nn.Module:
    return tiny_without_dropout(update, LABELS, pooling)


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(1000, 5000, (EXAMPLES, WIDTH), generator=generator)
    lengths = torch.tensor([10, 3, 7, 10, 5, 2, 9, 6])
    mask = (torch.arange(WIDTH).unsqueeze(0) < lengths.unsqueeze(1)).long()
    labels = torch.randint(0, len(LABELS), (EXAMPLES,), generator=generator)
    return TensorDataset(ids * mask, mask, labels)


def _per_example_grads(model: torch.nn.Module, data: TensorDataset) -> list[torch.Tensor]:
    """The slow reference: one example at a time, every trainable gradient flattened."""
    grads = []
    for ids, mask, label in zip(*data.tensors, strict=True):
        model.zero_grad(set_to_none=True)
        logits = _logits(model, ids.unsqueeze(0), mask.unsqueeze(0))
        torch.nn.functional.cross_entropy(logits, label.unsqueeze(0)).backward()
        grads.append(_flat_grad(model))
    model.zero_grad(set_to_none=True)
    return grads


def _private(
    model: torch.nn.Module, *, mode: GradSampleMode, noise: float, clip: float
) -> PrivateTraining:
    params = [p for p in model.parameters() if p.requires_grad]
    return make_private(
        model,
        torch.optim.SGD(params, lr=1.0),
        DataLoader(_data(), batch_size=LOADER_BATCH),
        dp=DpSgdSettings(
            noise_multiplier=noise,
            max_grad_norm=clip,
            accountant=AccountantKind.RDP,
            grad_sample_mode=mode,
        ),
        history=(),
        noise_generator=torch.Generator().manual_seed(3),
    )


@pytest.mark.parametrize("pooling", HEADS)
@pytest.mark.parametrize(("update", "mode"), CASES)
def test_clipped_sum_matches_batch_size_one_loop(
    update: UpdateKind, mode: GradSampleMode, pooling: Pooling
) -> None:
    model = _model(update, pooling)
    data = _data()
    per_example = _per_example_grads(model, data)
    norms = torch.stack([g.norm() for g in per_example])
    clip = float(norms.median())  # some examples clipped, some not
    assert (norms > clip * 1.01).any()
    assert (norms < clip * 0.99).any()
    expected_batch = EXAMPLES // (EXAMPLES // LOADER_BATCH)
    reference = clipped_sum(per_example, clip)
    reference = reference / expected_batch

    private = _private(model, mode=mode, noise=0.0, clip=clip)
    assert private.optimizer.expected_batch_size == expected_batch
    ids, mask, labels = data.tensors
    loss = private.backward(_logits(private.model, ids, mask), labels)
    assert private.optimizer.pre_step()  # clip, sum, (zero) noise, divide by the expected batch
    got = _flat_grad(model)
    private.model._close()

    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))
    with torch.no_grad():
        mean_ce = torch.nn.functional.cross_entropy(_logits(model, ids, mask), labels)
    assert loss == pytest.approx(float(mean_ce), rel=1e-5)


@pytest.mark.parametrize(("update", "mode"), CASES)
def test_empty_batch_adds_noise_of_the_configured_scale(
    update: UpdateKind, mode: GradSampleMode
) -> None:
    model = _model(update)
    clip, noise = 0.5, 1.0
    private = _private(model, mode=mode, noise=noise, clip=clip)
    params = [p for p in model.parameters() if p.requires_grad]
    steps = math.ceil(2000 / sum(p.numel() for p in params))  # the head alone: 99 values
    added = []
    for _ in range(steps):
        before = torch.cat([p.detach().reshape(-1).clone() for p in params])
        noise_only_step(private.optimizer)  # SGD at learning rate 1: the step is -noise / batch
        after = torch.cat([p.detach().reshape(-1) for p in params])
        added.append((before - after) * private.optimizer.expected_batch_size)
    private.model._close()
    noise_drawn = torch.cat(added)

    assert noise_drawn.numel() >= 2000
    assert float(noise_drawn.std()) == pytest.approx(noise * clip, rel=0.05)
    assert abs(float(noise_drawn.mean())) < 5 * noise * clip / math.sqrt(noise_drawn.numel())
    assert private.engine.accountant.history == [(noise, 1 / (EXAMPLES // LOADER_BATCH), steps)]


def test_mode_per_update_kind() -> None:
    assert dp_mode_for(UpdateKind.FULL) is GradSampleMode.GHOST
    assert dp_mode_for(UpdateKind.LORA) is GradSampleMode.HOOKS
    assert dp_mode_for(UpdateKind.LORA_FA) is GradSampleMode.HOOKS
    assert dp_mode_for(UpdateKind.HEAD) is GradSampleMode.HOOKS
    settings = DpSgdSettings(noise_multiplier=1.0, max_grad_norm=1.0, accountant=AccountantKind.RDP)
    assert settings.grad_sample_mode is GradSampleMode.HOOKS  # the canary audit's default


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("update", "mode"), CASES)
def test_round_accounts_the_same_steps_in_every_mode(
    update: UpdateKind, mode: GradSampleMode, bf16: bool
) -> None:
    """A whole round, also under bf16 autocast (on the CPU here; CUDA runs the same code)."""
    model = _model(update)
    data = _data()
    prior = ((1.1, 0.5, 3),)
    outcome = train_dp_round(
        model,
        TensorDataset(*(torch.cat([t] * 3) for t in data.tensors)),
        schedule=LocalSchedule(epochs=2, batch_size=4, learning_rate=1e-3),
        dp=DpSgdSettings(
            noise_multiplier=1.1,
            max_grad_norm=1.0,
            accountant=AccountantKind.RDP,
            grad_sample_mode=mode,
        ),
        history=prior,
        compute=Compute(torch.device("cpu"), bf16=bf16),
        randomness=RoundRandomness.reproducible(5, server_round=1),
        public_records=3 * EXAMPLES,
    )
    sample_rate, steps_per_epoch = poisson_schedule(examples=3 * EXAMPLES, batch_size=4)
    assert outcome.steps == 2 * steps_per_epoch
    assert outcome.history == ((1.1, 0.5, 3), (1.1, sample_rate, outcome.steps))
    assert math.isfinite(outcome.mean_loss)
    signed = checked(
        outcome.mechanism, steps=outcome.steps, noise_multiplier=1.1, max_grad_norm=1.0
    )  # every batch had per-example gradients for every tensor and was clipped, every step noised
    assert signed.clipped_batches == signed.batches > 0
    assert not any(
        hasattr(p, "_norm_sample") or hasattr(p, "grad_sample") for p in model.parameters()
    )


def test_ghost_refuses_a_layer_its_norm_pass_cannot_reach() -> None:
    class TwoBranches(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(5, 3)
            self.side = torch.nn.Linear(2, 3)

        def forward(self, ids: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.table(ids) + self.side(side)
            return out

    model = TwoBranches()
    loader = DataLoader(TensorDataset(torch.arange(4)), batch_size=2)
    private = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        loader,
        dp=DpSgdSettings(
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            accountant=AccountantKind.RDP,
            grad_sample_mode=GradSampleMode.GHOST,
        ),
        history=(),
    )
    logits = private.model(torch.tensor([0, 1]), torch.ones(2, 2))
    with pytest.raises(RuntimeError, match="no per-example norm"):
        private.backward(logits, torch.tensor([0, 2]))
    private.model._close()


def test_ghost_clipping_never_runs_under_bf16_autocast() -> None:
    """Ghost's norms and sum rounded apart in bf16 can exceed C: it runs in float32."""
    bf16 = Compute(torch.device("cpu"), bf16=True)

    with forward_precision(bf16, GradSampleMode.GHOST):
        ghost = torch.is_autocast_enabled("cpu")
    with forward_precision(bf16, GradSampleMode.HOOKS):
        hooks = torch.is_autocast_enabled("cpu")

    assert (ghost, hooks) == (False, True)


class _Overflow(torch.autograd.Function):
    """Identity forward; backward overflows the marked rows' gradient to infinity.

    Zero stays zero (``0 * 1e38 * 1e38``), as it does through any layer whose forward values
    are finite: a finite forward pass whose backward is not, for one example.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, *args: torch.Tensor) -> torch.Tensor:
        logits, rows = args
        ctx.save_for_backward(rows)
        return logits.clone()

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, *grads: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        (rows,) = ctx.saved_tensors  # type: ignore[attr-defined]
        gain = torch.where(rows, 1e38, 1.0).unsqueeze(1)
        return grads[0] * gain * gain, None


def _poisoned(logits: torch.Tensor, row: int, how: str) -> torch.Tensor:
    """``logits`` with one row's loss (``nan-logit``) or gradient (``inf-gradient``) non-finite."""
    rows = torch.arange(len(logits)) == row
    if how == "nan-logit":
        bump = torch.where(rows.unsqueeze(1), float("nan"), 0.0).expand_as(logits)
        return logits + bump
    poisoned: torch.Tensor = _Overflow.apply(logits, rows)
    return poisoned


@pytest.mark.parametrize("how", ["nan-logit", "inf-gradient"])
@pytest.mark.parametrize(("update", "mode"), CASES)
def test_a_non_finite_example_adds_nothing_and_the_rest_is_clipped_as_without_it(
    update: UpdateKind, mode: GradSampleMode, how: str
) -> None:
    """One example's NaN loss or infinite gradient counts as a zero gradient, in either mode.

    Unguarded, its clip factor (and the whole noisy sum) would be NaN: a coordinator that
    can make one candidate record's gradient non-finite would read its membership from it.
    """
    model = _model(update)
    data = _data()
    bad = 2
    others = [g for i, g in enumerate(_per_example_grads(model, data)) if i != bad]
    clip = float(torch.stack([g.norm() for g in others]).median())
    expected_batch = EXAMPLES // (EXAMPLES // LOADER_BATCH)
    reference = clipped_sum(others, clip)
    reference = reference / expected_batch

    private = _private(model, mode=mode, noise=0.0, clip=clip)
    ids, mask, labels = data.tensors
    private.backward(_poisoned(_logits(private.model, ids, mask), bad, how), labels)
    assert private.optimizer.pre_step()
    got = _flat_grad(model)
    private.model._close()

    assert bool(got.isfinite().all())
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))


@pytest.mark.parametrize("update", [UpdateKind.FULL, UpdateKind.LORA, UpdateKind.HEAD])
def test_hooks_clip_each_example_to_the_norm_under_bf16(update: UpdateKind) -> None:
    """Per-example gradients arrive in bf16 under autocast; they are clipped in float32.

    Opacus would take their norms, and so the clip factors, in bf16, which rounds a clipped
    row up to 0.4% above ``max_grad_norm``: more sensitivity than the record says.
    """
    model = _model(update)
    clip = 1e-3  # every example is clipped
    bf16 = Compute(torch.device("cpu"), bf16=True)
    ids, mask, labels = _data().tensors
    ratios = []
    for row in range(EXAMPLES):
        private = _private(model, mode=GradSampleMode.HOOKS, noise=0.0, clip=clip)
        with forward_precision(bf16, GradSampleMode.HOOKS):
            logits = _logits(private.model, ids[row : row + 1], mask[row : row + 1])
        private.backward(logits, labels[row : row + 1])
        assert private.optimizer.pre_step()
        clipped = _flat_grad(model).double().norm() * private.optimizer.expected_batch_size
        ratios.append(float(clipped) / clip)
        private.optimizer.zero_grad(set_to_none=True)
        private.model._close()
    assert max(ratios) <= 1 + 1e-5
    assert min(ratios) > 0.99
