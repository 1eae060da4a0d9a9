"""The coordinator's global model: what goes out each round, what comes back, what is kept.

It holds the classifier and its trainable arrays, the round plan's config, the coordinator's
own test set (its held-out part chooses, the rest is reported), a warm start's feature
standardisation, and the best model so far. A round's combined arrays are absorbed here; a
checkpoint of it is written after each round and read back when a run resumes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from torch.utils.data import TensorDataset

from residency.common.classifier_head import classifier_head
from residency.common.config.job import Job, refinable
from residency.common.config.kinds import Combine
from residency.common.config.round_plan import (
    FEATURE_SCALE_FLOOR,
    feature_transform_bytes,
    round_config,
)
from residency.common.config.signed_job import SignedJob
from residency.common.data.encoding import encode
from residency.common.data.readers import read_labeled_texts
from residency.common.device import pick_compute
from residency.common.evaluation import Scores, evaluate
from residency.common.feature_scale import public_feature_scale
from residency.common.head_input import encoder_features
from residency.common.label_prior import label_prior
from residency.common.model import (
    ModelSpec,
    base_fingerprint,
    build_classifier,
    export_hf,
    load_tokenizer,
    load_trainable_state,
    on_the_wire,
    round_one_arrays,
    set_feature_transform,
    trainable_state,
)
from residency.common.updates import prototypes
from residency.common.updates.traits import traits_for
from residency.server.checkpoint import Saved, save_checkpoint
from residency.server.held_out import KeptModel, better, majority_share, refines, split_rows
from residency.server.results import ClassResult, FinalResult, RoundResult
from residency.server.strategy import ValidatingStrategy
from residency.server.training_centre import training_centre

MODEL_DIR = "model"


class GlobalModel:
    """The job's global model on the coordinator, and the strategy phase it is in."""

    def __init__(self, job: Job, signed: SignedJob | None, strategy: ValidatingStrategy) -> None:
        self.job, self.signed, self.strategy = job, signed, strategy
        self.compute = pick_compute()
        spec = ModelSpec.from_job(job)
        self.model = build_classifier(spec)
        self.tokenizer = load_tokenizer(spec.source)
        self.labels = tuple(job.data.labels)
        self.fingerprint = base_fingerprint(self.model)
        self.arrays = self._initial_arrays()
        self.config = ConfigRecord(
            round_config(job, base_fingerprint=self.fingerprint, signed=signed)
        )
        self.held_out, self.test = self._load_test()
        self.held_out_scores: dict[int, float] = {}
        self.kept: KeptModel | None = None

    @property
    def refining(self) -> bool:
        """Whether this round is the warm start's release again (the job's last round)."""
        return self.strategy.refining

    @functools.cached_property
    def prior(self) -> torch.Tensor:
        """Each label's public prior (:mod:`residency.common.label_prior`), encoded once."""
        return label_prior(self.model, self.tokenizer, self.labels, compute=self.compute)

    def refine_next(self, server_round: int) -> bool:
        """Whether round ``server_round`` refines the release (:func:`held_out.refines`)."""
        train = self.job.train
        if server_round != 3 or not refinable(train.update, train.warm_start):
            return False
        release, trained = self.held_out_scores.get(1), self.held_out_scores.get(2)
        if release is None or trained is None or self.held_out is None:
            return False
        labels = self.held_out.tensors[2].tolist()
        return refines(release, trained, majority=majority_share(labels), rows=len(labels))

    def _initial_arrays(self) -> ArrayRecord:
        """What goes out in round 1: the trainable tensors, or a release's empty template."""
        arrays = round_one_arrays(self.model, self.job.train.round_update(1))
        return ArrayRecord({name: Array(value) for name, value in arrays.items()})

    def absorb(self, arrays: ArrayRecord) -> None:
        """Make the combined arrays the global model (for a release: set the head from them)."""
        values = {name: array.numpy() for name, array in arrays.items()}
        if self.strategy.combine is Combine.PROTOTYPES:  # a release, or the release again
            prototypes.set_head(self.model, values, self.prior)
            if self.refining:  # the head of both releases, for the input training set up
                self._standardise_head(*self.centre_and_scale)
            elif self.job.train.warm_start is not None:
                self._warm_start(values)
            return
        self.arrays = arrays
        load_trainable_state(self.model, values)

    def _warm_start(self, statistics: dict[str, np.ndarray]) -> None:
        """Train on from the release: standardised features, the class-mean head as the start.

        The centre is the release's noisy mean record and the held-out texts' mean, averaged
        by precision (:mod:`residency.server.training_centre`), and the scale a public
        statistic of the encoder (:mod:`residency.common.feature_scale`): what was released
        and the coordinator's own data, so the nodes' training rounds read them at no
        privacy cost.
        """
        held_out = None
        if self.held_out is not None:
            held_out = encoder_features(
                self.model, self.held_out, compute=self.compute, public=True
            )
        centre = training_centre(statistics, held_out)
        scale = public_feature_scale(
            self.model, self.tokenizer, max_length=self.job.model.max_length, compute=self.compute
        ).clamp_min(FEATURE_SCALE_FLOOR)
        set_feature_transform(self.model, centre.float(), scale.float())
        self.centre_and_scale = (centre, scale)
        self._standardise_head(centre, scale)
        state = trainable_state(self.model)
        self.arrays = ArrayRecord({name: Array(t.numpy()) for name, t in state.items()})
        self.config = ConfigRecord(
            round_config(
                self.job,
                base_fingerprint=self.fingerprint,
                feature_transform=feature_transform_bytes(centre.numpy(), scale.numpy()),
                signed=self.signed,
            )
        )
        self.strategy.combine = Combine.FEDAVG

    def _standardise_head(self, centre: torch.Tensor, scale: torch.Tensor) -> None:
        """The class-mean head for ``(x - centre) / scale``, its threshold at ``centre``.

        The same class directions; a zero bias, so every class scores alike at the centre,
        where training's input is zero (the release's own mean record, where
        :func:`prototypes.head_weights` puts it, is the noisier estimate of that point).
        """
        head = classifier_head(self.model)
        weight, _ = prototypes.standardized(head.weight.detach(), head.bias.detach(), centre, scale)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.zero_()

    def refine_round(self) -> None:
        """Make the next round the release again (its template out, the releases combined)."""
        self.strategy.combine = Combine.PROTOTYPES
        self.strategy.refining = True
        self.config = ConfigRecord({**dict(self.config), "refine": True})

    def _load_test(self) -> tuple[TensorDataset | None, TensorDataset | None]:
        """(held-out part, reported part) of the coordinator's test set, if it has one."""
        data = self.job.data
        if data.test is None:
            return None, None
        records = read_labeled_texts(
            data.test,
            text_column=data.text_column,
            label_column=data.label_column,
            labels=self.labels,
        )
        held = split_rows(records.texts, data.validation_share)

        def part(keep: bool) -> TensorDataset | None:
            rows = [i for i, flag in enumerate(held) if flag is keep]
            if not rows:
                return None
            return encode(
                [records.texts[i] for i in rows],
                [records.labels[i] for i in rows],
                self.tokenizer,
                max_length=self.job.model.max_length,
            )

        return part(True), part(False)

    def outgoing(self) -> ArrayRecord:
        """The global trainable arrays in the job's transfer precision (a refine: the template)."""
        if self.refining:
            return self._initial_arrays()
        state = {name: torch.from_numpy(array.numpy()) for name, array in self.arrays.items()}
        return ArrayRecord(
            {
                name: Array(value)
                for name, value in on_the_wire(state, self.job.train.transfer_dtype).items()
            }
        )

    def score(self) -> Scores | None:
        """The current global model on the reported part of the test set, if there is one."""
        if self.test is None:
            return None
        return evaluate(self.model, self.test, self.labels, compute=self.compute)

    def keep_if_better(self, server_round: int) -> float | None:
        """Score the round's model on the held-out part; keep its tensors if it is the best."""
        if self.held_out is None:
            return None
        accuracy = evaluate(self.model, self.held_out, self.labels, compute=self.compute).accuracy
        self.held_out_scores[server_round] = accuracy
        if self.refining or better(self.kept, accuracy):  # a refined release ends the job
            state = {name: t.detach().clone() for name, t in trainable_state(self.model).items()}
            self.kept = KeptModel(server_round, accuracy, state)
        return accuracy

    def restore_kept(self) -> int | None:
        """Make the kept model the global model; its round (None: nothing was held out)."""
        if self.kept is None:
            return None
        load_trainable_state(
            self.model, {name: t.float().numpy() for name, t in self.kept.state.items()}
        )
        return self.kept.round

    def checkpoint(
        self, out_dir: Path, server_round: int, ledger_position: tuple[int, str] | None
    ) -> None:
        """Keep the global model and the ledger position of a completed round."""
        transform = self.config.get("feature-transform", b"")
        kept = self.kept
        save_checkpoint(
            out_dir,
            server_round,
            {name: t.float().numpy() for name, t in trainable_state(self.model).items()},
            feature_transform=transform if isinstance(transform, bytes) else b"",
            ledger_position=ledger_position,
            kept=None
            if kept is None
            else (
                kept.round,
                kept.accuracy,
                {name: t.float().numpy() for name, t in kept.state.items()},
            ),
        )

    def restore(self, saved: Saved, rounds: Iterable[RoundResult], next_round: int) -> None:
        """Continue from a checkpoint: its global model, a warm start's transform, the kept model.

        The model and strategy are set as they were after the checkpoint's round, so the next
        round goes out exactly as it would have before the crash.
        """
        if saved.transform is not None:  # the warm start's release ran: its standardisation
            centre, scale = (torch.from_numpy(np.array(row)) for row in saved.transform)
            set_feature_transform(self.model, centre, scale)
            self.centre_and_scale = (centre, scale)
            self.config = ConfigRecord(
                round_config(
                    self.job,
                    base_fingerprint=self.fingerprint,
                    feature_transform=feature_transform_bytes(*saved.transform),
                    signed=self.signed,
                )
            )
        load_trainable_state(self.model, saved.arrays)
        self.arrays = ArrayRecord({name: Array(value) for name, value in saved.arrays.items()})
        self.strategy.combine = traits_for(self.job.train.round_update(next_round)).combine
        self.held_out_scores = {
            r.round: r.held_out_accuracy for r in rounds if r.held_out_accuracy is not None
        }
        checkpoint = saved.checkpoint
        if saved.kept is not None and checkpoint.kept_round is not None:
            state = {name: torch.from_numpy(np.array(a)) for name, a in saved.kept.items()}
            self.kept = KeptModel(checkpoint.kept_round, checkpoint.kept_accuracy or 0.0, state)

    def finish(self, out_dir: Path) -> FinalResult:
        """Score the kept model (else the last) and export it as a Hugging Face checkpoint."""
        kept = self.restore_kept()
        scores = self.score()
        model_dir = export_hf(self.model, self.tokenizer, self.labels, out_dir / MODEL_DIR)
        return FinalResult(
            accuracy=scores.accuracy if scores else None,
            macro_f1=scores.macro_f1 if scores else None,
            per_class={
                label: ClassResult(**vars(value))
                for label, value in (scores.per_class if scores else {}).items()
            },
            model_dir=str(model_dir),
            round=kept,
        )
