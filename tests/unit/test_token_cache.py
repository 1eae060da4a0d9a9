"""The node tokenises a dataset once; later rounds (new processes) read the same ids back."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from residency.client.token_cache import CACHE_DIR, encoded
from residency.common.data.encoding import encode
from residency.common.data.records import LabeledTexts
from residency.common.model import load_tokenizer

pytestmark = pytest.mark.unit


def _records(extra: str = "") -> LabeledTexts:
    texts = tuple(f"patient {i} reports chest pain{extra}" for i in range(20))
    labels = tuple(i % 2 for i in range(20))
    return LabeledTexts(texts=texts, labels=labels, label_names=("a", "b"), source=Path("x.csv"))


def _files(folder: Path) -> list[Path]:
    return sorted((folder / CACHE_DIR).glob("*.safetensors"))


def _same(a: torch.utils.data.TensorDataset, b: torch.utils.data.TensorDataset) -> bool:
    return all(
        torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(a.tensors, b.tensors, strict=True)
    )


def test_a_second_round_reads_the_ids_the_first_wrote(tmp_path: Path) -> None:
    tokenizer = load_tokenizer("tiny")
    records = _records()
    reference = encode(records.texts, records.labels, tokenizer, max_length=16)

    first = encoded(records, tokenizer, max_length=16, folder=tmp_path)
    written = _files(tmp_path)
    second = encoded(records, load_tokenizer("tiny"), max_length=16, folder=tmp_path)

    assert len(written) == 1
    assert _same(first, reference)
    assert _same(second, reference)
    assert _files(tmp_path) == written


def test_other_data_or_length_never_reuses_an_entry(tmp_path: Path) -> None:
    tokenizer = load_tokenizer("tiny")
    encoded(_records(), tokenizer, max_length=16, folder=tmp_path)

    edited = encoded(_records(" today"), tokenizer, max_length=16, folder=tmp_path)
    longer = encoded(_records(), tokenizer, max_length=24, folder=tmp_path)

    assert len(_files(tmp_path)) == 3
    assert edited.tensors[0].shape == (20, 16)
    assert longer.tensors[0].shape == (20, 24)
    records = _records(" today")
    assert _same(edited, encode(records.texts, records.labels, tokenizer, max_length=16))


def test_a_corrupt_entry_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokenizer = load_tokenizer("tiny")
    records = _records()
    encoded(records, tokenizer, max_length=16, folder=tmp_path)
    _files(tmp_path)[0].write_bytes(b"not a safetensors file")

    with caplog.at_level(logging.WARNING, logger="residency.node"):
        again = encoded(records, tokenizer, max_length=16, folder=tmp_path)

    assert _same(again, encode(records.texts, records.labels, tokenizer, max_length=16))
    assert "unreadable" in caplog.text
    assert _files(tmp_path)[0].read_bytes().startswith(b"not") is False
