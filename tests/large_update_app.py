"""A Flower app that moves one BERT-base-sized model each way and reports what arrived.

``tests/integration/test_large_update.py`` submits it to a real coordinator and node, the way
``residency run`` submits Residency's own app: this module is copied into the app bundle and
named by its components. The ServerApp pushes a seeded, BERT-base-shaped fp32 payload (about
438 MB) to the one connected node; the ClientApp hashes what it received and answers with a
second payload of the same size. The ServerApp writes both digests and its timings to the
JSON file named in the run config, where the test compares them with the digests of the same
payloads computed locally.

Nothing here imports torch or Residency's training code, so the numbers measure Flower's
transport (chunking, TLS, the SuperLink's state, the node's executor), not training.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from residency.common.privacy.update_digest import update_sha256

ARRAYS = "arrays"
ECHO = "echo"
REPORT_KEY = "report"
DOWN_SEED_KEY = "down-seed"
UP_SEED_KEY = "up-seed"
NODE_WAIT_S = 120.0
REPLY_WAIT_S = 600.0

server_app = ServerApp()
client_app = ClientApp()


def bert_base_shapes(*, labels: int = 3) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of ``BertForSequenceClassification`` with bert-base's config.

    Vocabulary 30522, hidden size 768, 12 layers, FFN 3072, 512 positions: 109.5 M parameters,
    the full fine-tuning update a node sends for BERT-base.
    """
    hidden, ffn, vocab = 768, 3072, 30_522
    shapes: dict[str, tuple[int, ...]] = {
        "bert.embeddings.word_embeddings.weight": (vocab, hidden),
        "bert.embeddings.position_embeddings.weight": (512, hidden),
        "bert.embeddings.token_type_embeddings.weight": (2, hidden),
        "bert.embeddings.LayerNorm.weight": (hidden,),
        "bert.embeddings.LayerNorm.bias": (hidden,),
    }
    for layer in range(12):
        prefix = f"bert.encoder.layer.{layer}"
        for name in ("attention.self.query", "attention.self.key", "attention.self.value"):
            shapes[f"{prefix}.{name}.weight"] = (hidden, hidden)
            shapes[f"{prefix}.{name}.bias"] = (hidden,)
        shapes[f"{prefix}.attention.output.dense.weight"] = (hidden, hidden)
        shapes[f"{prefix}.attention.output.dense.bias"] = (hidden,)
        shapes[f"{prefix}.attention.output.LayerNorm.weight"] = (hidden,)
        shapes[f"{prefix}.attention.output.LayerNorm.bias"] = (hidden,)
        shapes[f"{prefix}.intermediate.dense.weight"] = (ffn, hidden)
        shapes[f"{prefix}.intermediate.dense.bias"] = (ffn,)
        shapes[f"{prefix}.output.dense.weight"] = (hidden, ffn)
        shapes[f"{prefix}.output.dense.bias"] = (hidden,)
        shapes[f"{prefix}.output.LayerNorm.weight"] = (hidden,)
        shapes[f"{prefix}.output.LayerNorm.bias"] = (hidden,)
    shapes["bert.pooler.dense.weight"] = (hidden, hidden)
    shapes["bert.pooler.dense.bias"] = (hidden,)
    shapes["classifier.weight"] = (labels, hidden)
    shapes["classifier.bias"] = (labels,)
    return shapes


def payload(seed: int) -> dict[str, np.ndarray]:
    """Seeded fp32 values for every BERT-base tensor (distinct seeds give distinct bytes)."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal(shape, dtype=np.float32)
        for name, shape in bert_base_shapes().items()
    }


def payload_bytes(arrays: dict[str, np.ndarray]) -> int:
    """Raw size of the numbers, without any serialisation overhead."""
    return sum(int(array.nbytes) for array in arrays.values())


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(array) for name, array in arrays.items()})


def _unpack(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def _max_rss_kib() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _wait_for_node(grid: Grid) -> int:
    deadline = time.monotonic() + NODE_WAIT_S
    while not (nodes := sorted(grid.get_node_ids())):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no node connected within {NODE_WAIT_S:g} s")
        time.sleep(0.2)
    return nodes[0]


@server_app.main()
def server(grid: Grid, context: Context) -> None:
    """Send the down payload, take the reply, write digests and timings for the test."""
    config = context.run_config
    node = _wait_for_node(grid)
    sent = payload(int(config[DOWN_SEED_KEY]))
    message = Message(RecordDict({ARRAYS: _record(sent)}), dst_node_id=node, message_type="train")
    started = time.time()
    (message_id,) = grid.push_messages([message])
    pushed = time.time()
    deadline = time.monotonic() + REPLY_WAIT_S
    replies: list[Message] = []
    while not replies:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no reply within {REPLY_WAIT_S:g} s")
        replies = list(grid.pull_messages([message_id]))
        if not replies:
            time.sleep(0.05)
    received = time.time()
    reply = replies[0]
    if reply.has_error():
        raise RuntimeError(f"the node answered with an error: {reply.error.reason}")
    got = _unpack(reply.content.array_records[ARRAYS])
    echo = dict(reply.content.config_records[ECHO])
    report = {
        "down_bytes": payload_bytes(sent),
        "down_tensors": len(sent),
        "down_sha256_sent": update_sha256(sent),
        "down_sha256_received": echo["down-sha256"],
        "down_bytes_received": echo["down-bytes"],
        "up_bytes": payload_bytes(got),
        "up_tensors": len(got),
        "up_sha256_sent": echo["up-sha256"],
        "up_sha256_received": update_sha256(got),
        "t_push_start": started,
        "t_pushed": pushed,
        "t_node_received": echo["t-received"],
        "t_node_replied": echo["t-replied"],
        "t_reply_received": received,
        "serverapp_maxrss_kib": _max_rss_kib(),
        "clientapp_maxrss_kib": echo["max-rss-kib"],
    }
    path = Path(str(config[REPORT_KEY]))
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(report, indent=2), encoding="utf-8")
    os.replace(partial, path)


@client_app.train()
def client(msg: Message, context: Context) -> Message:
    """Hash the payload that arrived and answer with the seeded up payload."""
    received = time.time()
    got = _unpack(msg.content.array_records[ARRAYS])
    reply_arrays = payload(int(context.run_config[UP_SEED_KEY]))
    echo = ConfigRecord(
        {
            "down-sha256": update_sha256(got),
            "down-bytes": payload_bytes(got),
            "up-sha256": update_sha256(reply_arrays),
            "t-received": received,
        }
    )
    del got
    record = _record(reply_arrays)
    del reply_arrays
    echo["max-rss-kib"] = _max_rss_kib()
    echo["t-replied"] = time.time()
    return Message(RecordDict({ARRAYS: record, ECHO: echo}), reply_to=msg)
