"""The coordinator's SuperLink waits long enough for SQLite locks held by large deletes."""

from __future__ import annotations

import sqlite3

import pytest
from flwr.supercore import sql_mixin

from residency.server.superlink import SQLITE_BUSY_TIMEOUT_MS, raise_lock_timeout

pytestmark = pytest.mark.unit


def test_every_new_connection_gets_the_longer_lock_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(vars(sql_mixin), "SQLITE_PRAGMAS", sql_mixin.SQLITE_PRAGMAS)
    connection = sqlite3.connect(":memory:")

    raise_lock_timeout()
    sql_mixin._set_sqlite_pragmas(connection, None)

    assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == SQLITE_BUSY_TIMEOUT_MS
    assert SQLITE_BUSY_TIMEOUT_MS < 30_000  # below Flower's HTTP client timeout


def test_the_coordinator_starts_this_superlink(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    from residency.server.coordinator import init_coordinator, superlink_command

    folder = init_coordinator(Path(str(tmp_path)) / "c", names=["127.0.0.1"])
    command, _ = superlink_command(folder, folder.load(), insecure=False)

    assert command[1:3] == ["-m", "residency.server.superlink"]
    assert "--database" in command
