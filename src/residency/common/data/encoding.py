"""Tokenised tensors for training and evaluation, padded per batch rather than per dataset."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import TensorDataset
from transformers import PreTrainedTokenizerBase


def encode(
    texts: Sequence[str],
    labels: Sequence[int],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
) -> TensorDataset:
    """Tokenise to ``(input_ids, attention_mask, labels)``, right-padded to ``max_length``.

    Fixed-width storage keeps Opacus' Poisson loader simple (it can build empty batches from
    the element shapes); :func:`trim` cuts each batch back to its longest sequence.
    """
    enc = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        return_token_type_ids=False,
    )
    return TensorDataset(
        enc["input_ids"].to(torch.long),
        enc["attention_mask"].to(torch.long),
        torch.as_tensor(list(labels), dtype=torch.long),
    )


def trim(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns that no sequence in this batch uses."""
    width = max(int(attention_mask.sum(dim=1).max().item()), 1) if len(attention_mask) else 1
    return input_ids[:, :width], attention_mask[:, :width]


def bert_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Model inputs with explicit, contiguous ``position_ids`` and ``token_type_ids``.

    BERT otherwise broadcasts a buffer with batch dimension 1, which breaks Opacus'
    per-sample gradients of the embeddings.
    """
    batch, width = input_ids.shape
    positions = torch.arange(width, device=input_ids.device).unsqueeze(0).expand(batch, width)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": positions.contiguous(),
        "token_type_ids": torch.zeros_like(input_ids),
    }


def model_inputs(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    device: torch.device,
    trim_padding: bool = False,
) -> dict[str, torch.Tensor]:
    """A stored batch as the model's inputs on ``device``: contiguous and explicit.

    Private records keep their full ``max_length`` width: trimmed to a batch's longest
    sequence, the time a pass takes would tell how long the longest record in it is (one
    long note made a batch of short ones several times slower), a timing channel about one
    record. ``trim_padding`` is for public data only (the coordinator's test set, the public
    texts of the feature scale). Trimming slices columns off, which leaves the token ids
    non-contiguous; Opacus' ghost norm of the word embeddings views them flat and would fail.
    """
    ids, mask = trim(input_ids, attention_mask) if trim_padding else (input_ids, attention_mask)
    return bert_inputs(ids.contiguous().to(device), mask.contiguous().to(device))
