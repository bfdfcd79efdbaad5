"""The Huey side of the SQLite benchmark: ``huey_consumer bench.huey_app.huey``.

``huey`` is a ``SqliteHuey`` with Huey's defaults on the file ``$BENCH_HUEY_DB`` (WAL with
SQLite's default ``synchronous=FULL``: an fsync per commit). ``huey_nofsync`` is the same on
a second file with ``fsync=False`` (``synchronous=OFF``: no fsync at all, less durable than
Conveyor's ``synchronous=NORMAL``), to show how much of Huey's time is the disk.

Huey stores a result only when a task returns something other than None: ``noop`` stores
none, ``noop_result`` stores one.
"""

from __future__ import annotations

import os
from typing import Any

from huey import SqliteHuey

DB = os.environ.get("BENCH_HUEY_DB", "huey-bench.sqlite3")


def make(filename: str, fsync: bool | None = None) -> tuple[SqliteHuey, Any, Any]:
    huey = SqliteHuey("bench", filename=filename, fsync=fsync)

    @huey.task()
    def noop() -> None:
        return None

    @huey.task()
    def noop_result() -> bool:
        return True

    return huey, noop, noop_result


huey, noop, noop_result = make(DB)
huey_nofsync, noop_nofsync, noop_result_nofsync = make(DB + "-nofsync", fsync=False)
