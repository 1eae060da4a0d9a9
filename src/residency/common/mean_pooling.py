"""A BERT classifier that reads the masked mean of the last hidden states, not the [CLS] pooler.

Sentence-transformers checkpoints (the default MiniLM-L6 among them) were trained to be read by
mean pooling: their [CLS] vector and pooler carry little of the sentence. A classifier head on
the mean needs far less signal to train, which under DP-SGD's noise is the difference between
learning and staying at the majority class (``bench/accuracy.py``).

With ``normalize_features`` set in the config, the head reads the mean scaled to unit L2 norm:
a cosine classifier, what ``update = "prototypes"`` builds from noisy class means. With
``feature_centre`` and ``feature_scale`` also set, the head reads that unit vector
standardised, ``(x - centre) / scale``: a head trained by DP-SGD after a release steps along
well-conditioned features (the centre is the release's mean, the scale a public statistic).

This file imports only torch and transformers because Hugging Face copies it into every
exported checkpoint (``register_for_auto_class``): users load the model with
``AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)`` without
installing Residency.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class FeatureStandardizer(nn.Module):
    """``(x - centre) / scale`` with the centre and scale of the model's config, if it has them.

    A module of its own (with no parameters) so that what it reads, the encoder's pooled
    features, can be captured once and standardised again whenever the transform changes.
    """

    def __init__(self, centre: list[float] | None, scale: list[float] | None) -> None:
        super().__init__()
        self.centre, self.scale = centre, scale

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """The standardised features, or ``pooled`` itself when no transform is set."""
        if self.centre is None or self.scale is None:
            return pooled
        return (pooled - pooled.new_tensor(self.centre)) / pooled.new_tensor(self.scale)


class MeanPoolingBertForSequenceClassification(BertPreTrainedModel):  # type: ignore[no-untyped-call]
    """``BertForSequenceClassification`` with masked mean pooling and no pooler layer."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        if config.num_labels is None:
            raise ValueError("the model config has no num_labels; set id2label or num_labels")
        self.num_labels: int = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels)
        self.normalize_features = bool(getattr(config, "normalize_features", False))
        self.standardizer = FeatureStandardizer(
            getattr(config, "feature_centre", None), getattr(config, "feature_scale", None)
        )
        self.post_init()  # type: ignore[no-untyped-call]

    def set_feature_transform(
        self, centre: torch.Tensor | None, scale: torch.Tensor | None
    ) -> None:
        """Standardise the head's input as ``(x - centre) / scale`` (None, None: not at all).

        Both live in the config (so an exported checkpoint carries them), not in buffers
        that loading would have to materialise.
        """
        if centre is None or scale is None:
            self.config.feature_centre = self.config.feature_scale = None
        else:
            width = self.config.hidden_size
            if centre.shape != (width,) or scale.shape != (width,) or not bool((scale > 0).all()):
                raise ValueError(f"feature centre and scale must be {width} numbers, scale > 0")
            self.config.feature_centre = [float(v) for v in centre.detach().cpu()]
            self.config.feature_scale = [float(v) for v in scale.detach().cpu()]
        self.standardizer.centre = self.config.feature_centre
        self.standardizer.scale = self.config.feature_scale

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Logits from the mean of the unmasked tokens' last hidden states."""
        kwargs.pop("return_dict", None)
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if attention_mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
        else:
            mask = attention_mask.to(hidden.dtype)
        mask = mask.unsqueeze(-1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        if self.normalize_features:
            pooled = nn.functional.normalize(pooled, dim=-1)
        logits = self.classifier(self.dropout(self.standardizer(pooled)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


MeanPoolingBertForSequenceClassification.register_for_auto_class(  # type: ignore[no-untyped-call]
    "AutoModelForSequenceClassification"
)
