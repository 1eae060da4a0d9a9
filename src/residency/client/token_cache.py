"""Each dataset is tokenised once per tokenizer and length, then read back from the node's state.

The warm executor forks a fresh process for every round, so an in-memory cache would be lost;
tokenising a large dataset every round would cost more than a small model's training. Entries
are keyed by the dataset fingerprint, the tokenizer's own serialisation and ``max_length``, so
an edited file or another tokenizer never reuses stale ids. Files are safetensors (no pickle),
written atomically; an unreadable entry is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch.utils.data import TensorDataset
from transformers import PreTrainedTokenizerBase

from residency.common.data.encoding import encode
from residency.common.data.records import LabeledTexts
from residency.common.files import write_atomic

log = logging.getLogger("residency.node")

CACHE_DIR = "tokens"
_FORMAT = "residency-token-cache-v1"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of everything that decides the ids: the fast tokenizer's full JSON, or vocab.

    The backend's ``truncation`` and ``padding`` fields are left out: the tokenizer sets them on
    every call, and ``encode`` passes its own.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps(
        {"class": type(tokenizer).__name__, "padding_side": tokenizer.padding_side},
        sort_keys=True,
    )
    return hashlib.sha256(f"{text}\0{extra}".encode()).hexdigest()


def cache_key(dataset: str, tokenizer: str, max_length: int) -> str:
    """The file name stem for one (dataset, tokenizer, length)."""
    return hashlib.sha256(f"{_FORMAT}\0{dataset}\0{tokenizer}\0{max_length}".encode()).hexdigest()


def encoded(
    records: LabeledTexts,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    folder: Path,
) -> TensorDataset:
    """``encode(records)``, from ``folder`` when this exact encoding was made before."""
    key = cache_key(records.fingerprint(), tokenizer_fingerprint(tokenizer), max_length)
    path = folder / CACHE_DIR / f"{key}.safetensors"
    if path.is_file():
        try:
            tensors = load(path.read_bytes())
            ids, mask, labels = tensors["input_ids"], tensors["attention_mask"], tensors["labels"]
            if ids.shape == mask.shape == (len(records), max_length) and len(labels) == len(
                records
            ):
                return TensorDataset(ids.long(), mask.long(), labels.long())
        except (SafetensorError, KeyError, OSError) as exc:
            log.warning("token cache %s unreadable (%s); tokenising again", path.name, exc)
    data = encode(records.texts, records.labels, tokenizer, max_length=max_length)
    ids, mask, labels = data.tensors
    small = {
        "input_ids": ids.to(torch.int32),  # ids fit 32 bits; halves the cache on disk
        "attention_mask": mask.to(torch.int8),
        "labels": labels.to(torch.int32),
    }
    write_atomic(path, save(small), mode=0o600)
    return data
