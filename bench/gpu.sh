#!/usr/bin/env bash
# DP-SGD throughput on an NVIDIA GPU in bf16: MiniLM-L6 and a BERT-base sized model.
#
# Needs only this repository and a virtual environment with Residency installed; nothing is
# downloaded (the BERT-base sized model is randomly initialised). From the repository root:
#
#     python -m venv .venv && .venv/bin/pip install -e . && PYTHON=.venv/bin/python bash bench/gpu.sh
#
# or, with the venv already active, just `bash bench/gpu.sh`. Optional: STEPS (timed steps per
# configuration, default 20), WARMUP (5), BATCH (32), SEQ_LEN (128), OUT (a folder to keep the
# JSON results in; by default they go with the temp folder).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
BATCH=${BATCH:-32}
SEQ_LEN=${SEQ_LEN:-128}

nvidia-smi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=${OUT:-$work}
mkdir -p "$out"

# BERT-base shape (110M parameters), random weights, MiniLM's uncased WordPiece vocabulary.
"$PYTHON" - "$work/bert-base" <<'PY'
import sys

import torch
from transformers import BertConfig, BertForSequenceClassification

from residency.common.model import load_tokenizer

torch.manual_seed(0)
config = BertConfig(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
)
BertForSequenceClassification(config).save_pretrained(sys.argv[1])
load_tokenizer("minilm").save_pretrained(sys.argv[1])
PY

for model in minilm "$work/bert-base"; do
  name=$(basename "$model")
  echo
  echo "== $name: batch $BATCH x $SEQ_LEN tokens, $WARMUP warm-up + $STEPS timed steps"
  "$PYTHON" bench/throughput.py --device cuda --model "$model" \
    --steps "$STEPS" --warmup "$WARMUP" --batch-size "$BATCH" --seq-len "$SEQ_LEN" \
    --json "$out/throughput-$name.json"
done

echo
echo "== samples per second"
"$PYTHON" - "$out"/throughput-*.json <<'PY'
import json
import sys

for path in sys.argv[1:]:
    run = json.load(open(path, encoding="utf-8"))
    print(f"{run['model'].rsplit('/', 1)[-1]} ({run['device']}, {run['precision']})")
    for row in run["results"]:
        ratio = row["speed_ratio"]
        print(
            f"  {row['update']:<8} {row['mode']:<13} {row['samples_per_s']:>9.1f} samples/s"
            f"  {ratio:.2f}x non-private  {row['peak_mib']:>8.0f} MiB"
        )
    for target in run["targets"]:
        verdict = "met" if target["met"] else "MISSED"
        print(
            f"  target DP {target['update']} >= {target['target']:.2f}x: {verdict} "
            f"({target['mode']} {target['ratio']:.2f}x)"
        )
PY
