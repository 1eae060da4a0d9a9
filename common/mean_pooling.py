"""A BERT classifier that reads the masked mean of the last hidden states, not the [CLS] pooler.

Sentence-transformers checkpoints (the default MiniLM-L6 among them) were trained to be read by
mean pooling: their [CLS] vector and pooler carry little of the sentence. A classifier head on
the mean needs far less signal to train, which under DP-SGD's noise is the difference between
learning and staying at the majority class (``bench/accuracy.py``).

With ``normalize_features`` set in the config, the head reads the mean scaled to unit L2 norm:
a cosine classifier, what ``update = "prototypes"`` builds from noisy class means.

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
        self.post_init()  # type: ignore[no-untyped-call]

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
        logits = self.classifier(self.dropout(pooled))
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
