"""The mean-pooling head: chosen from the checkpoint, exported so plain transformers loads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from residency.common.config.kinds import UpdateKind
from residency.common.errors import ConfigError
from residency.common.mean_pooling import MeanPoolingBertForSequenceClassification
from residency.common.model import (
    ModelSpec,
    Pooling,
    base_fingerprint,
    build_classifier,
    checkpoint_pooling,
    export_hf,
    load_tokenizer,
)

pytestmark = pytest.mark.unit

LABELS = ("a", "b", "c")


def _trained(pooling: Pooling, update: UpdateKind = UpdateKind.LORA) -> torch.nn.Module:
    model = build_classifier(
        ModelSpec(source="tiny", labels=LABELS, update=update, pooling=pooling)
    )
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)  # adapters away from their zero start
    return model.eval()


def _logits(model: torch.nn.Module, texts: list[str]) -> torch.Tensor:
    batch = load_tokenizer("tiny")(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits: torch.Tensor = model(**batch).logits
    return logits


def test_shipped_minilm_is_read_by_its_mean_pooling() -> None:
    assert checkpoint_pooling("minilm") is Pooling.MEAN
    assert checkpoint_pooling("tiny") is Pooling.CLS


def test_padding_does_not_change_the_mean() -> None:
    model = _trained(Pooling.MEAN)
    tokenizer = load_tokenizer("tiny")
    alone = tokenizer(["fever"], return_tensors="pt")
    padded = tokenizer(
        ["fever", "a much longer note about chest pain"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        torch.testing.assert_close(model(**alone).logits[0], model(**padded).logits[0])


def test_export_reloads_without_residency_and_predicts_the_same(tmp_path: Path) -> None:
    model = _trained(Pooling.MEAN)
    texts = ["chest pain and cough", "fever", "memory loss, confusion, tremor"]
    expected = _logits(model, texts)
    out = export_hf(model, load_tokenizer("tiny"), LABELS, tmp_path / "model")

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MeanPoolingBertForSequenceClassification"]
    module, _, name = config["auto_map"]["AutoModelForSequenceClassification"].partition(".")
    assert name == "MeanPoolingBertForSequenceClassification"
    source = (out / f"{module}.py").read_text()
    assert "residency" not in source.replace("Residency", "").split('"""', 2)[2]  # code only

    reloaded = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
    assert type(reloaded).__name__ == "MeanPoolingBertForSequenceClassification"
    torch.testing.assert_close(_logits(reloaded.eval(), texts), expected)
    # A Residency export fine-tuned again keeps its head.
    assert checkpoint_pooling(str(out)) is Pooling.MEAN


def test_plain_bert_checkpoint_keeps_the_cls_pooler(tmp_path: Path) -> None:
    out = export_hf(_trained(Pooling.CLS), load_tokenizer("tiny"), LABELS, tmp_path / "m")
    assert checkpoint_pooling(str(out)) is Pooling.CLS
    rebuilt = build_classifier(ModelSpec(source=str(out), labels=LABELS, update=UpdateKind.FULL))
    assert not isinstance(rebuilt, MeanPoolingBertForSequenceClassification)


def test_parties_that_pool_differently_do_not_share_a_fingerprint() -> None:
    cls = build_classifier(ModelSpec(source="tiny", labels=LABELS, update=UpdateKind.LORA))
    mean = build_classifier(
        ModelSpec(source="tiny", labels=LABELS, update=UpdateKind.LORA, pooling=Pooling.MEAN)
    )
    assert base_fingerprint(cls) != base_fingerprint(mean)


def test_unreadable_pooling_file_is_one_line_naming_it(tmp_path: Path) -> None:
    out = export_hf(_trained(Pooling.CLS), load_tokenizer("tiny"), LABELS, tmp_path / "m")
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"1_Pooling/config\.json: unreadable .*fix:") as info:
        checkpoint_pooling(str(out))
    assert "\n" not in str(info.value)
