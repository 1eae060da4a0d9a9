"""A hostile coordinator's ServerApp: well-formed Residency round plans no trusted launcher signed.

``tests/integration/test_hostile_coordinator.py`` runs it on Flower's own SuperLink (a
coordinator that is not Residency's, or a compromised one) against a real Residency node. It
builds each plan with Residency's own ``round_config``, so every plan passes the node's bounds
checks and only the launcher signature can stop it: unsigned, signed by the coordinator's own
key, signed but edited (a higher epsilon target), and signed but relayed with another target.
It writes each reply's error code and reason, by case, to the report file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from residency.common import wire
from residency.common.config.job import Job
from residency.common.config.round_plan import round_config
from residency.common.config.signed_job import SignedJob, sign_job
from residency.common.model import ModelSpec, base_fingerprint, build_classifier, round_one_arrays
from residency.common.privacy.signing import Signer, load_signer

JOB_KEY = "job-json"
LAUNCHER_KEY_FILE = "launcher-key"
REPORT_KEY = "report"
WAIT_S = 120.0

app = ServerApp()


def _edited(signed: SignedJob) -> SignedJob:
    body = json.loads(signed.body)
    body["privacy"]["target_epsilon"] = 50.0
    edited = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return signed.model_copy(update={"body": edited})


@app.main()
def _main(grid: Grid, context: Context) -> None:
    job = Job.model_validate_json(str(context.run_config[JOB_KEY]), context={"remote": True})
    trusted = load_signer(Path(str(context.run_config[LAUNCHER_KEY_FILE])))
    own = Signer(Ed25519PrivateKey.generate())
    model = build_classifier(ModelSpec.from_job(job))
    arrays = ArrayRecord(
        {k: Array(v) for k, v in round_one_arrays(model, job.train.round_update(1)).items()}
    )
    fingerprint = base_fingerprint(model)
    signed = sign_job(job, trusted)
    cases: dict[str, dict[str, object]] = {
        "unsigned": round_config(job, base_fingerprint=fingerprint),
        "coordinator's own key": round_config(
            job, base_fingerprint=fingerprint, signed=sign_job(job, own)
        ),
        "edited after signing": round_config(
            job, base_fingerprint=fingerprint, signed=_edited(signed)
        ),
        "relayed with another target": {
            **round_config(job, base_fingerprint=fingerprint, signed=signed),
            "target-epsilon": 50.0,
        },
    }
    report: dict[str, list[dict[str, object]]] = {}
    for case, config in cases.items():
        messages = [
            Message(
                RecordDict(
                    {
                        wire.ARRAYS: arrays,
                        wire.CONFIG: ConfigRecord({**config, "server-round": 1}),
                    }
                ),
                dst_node_id=node,
                message_type="train",
            )
            for node in grid.get_node_ids()
        ]
        ids = set(grid.push_messages(messages))
        replies: list[Message] = []
        deadline = time.monotonic() + WAIT_S
        while ids and time.monotonic() < deadline:
            for reply in grid.pull_messages(ids):
                ids.discard(reply.metadata.reply_to_message_id)
                replies.append(reply)
            time.sleep(0.2)
        report[case] = [
            {
                "error": reply.error.code if reply.has_error() else None,
                "reason": reply.error.reason if reply.has_error() else None,
            }
            for reply in replies
        ]
    Path(str(context.run_config[REPORT_KEY])).write_text(json.dumps(report), "utf-8")
