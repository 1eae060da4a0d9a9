"""A Flower app a hostile launcher submits: its own code, meant to run next to each party's files.

``tests/integration/test_faults.py`` bundles this module and submits it with ``flwr run`` to a
real Residency coordinator with real Residency nodes. If either side ran the bundle's code, its
app would leave a marker file (the stand-in for reading keys or records) at the path named in
the run config; Residency's parties run only their installed apps, so no marker may appear.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

MARKER_KEY = "marker"
REPORT_KEY = "report"
WAIT_S = 60.0

server_app = ServerApp()
client_app = ClientApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    marker = Path(str(context.run_config[MARKER_KEY]))
    marker.with_name(marker.name + ".server").write_text("the coordinator ran launcher code")
    messages = [
        Message(
            RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord({"server-round": 1})}),
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
    report = [{"error": reply.error.code if reply.has_error() else None} for reply in replies]
    Path(str(context.run_config[REPORT_KEY])).write_text(json.dumps(report), "utf-8")


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    marker = Path(str(context.run_config[MARKER_KEY]))
    marker.with_name(marker.name + ".node").write_text("a node ran launcher code")
    return Message(RecordDict(), reply_to=msg)
