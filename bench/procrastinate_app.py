"""The procrastinate side of ``bench.postgres_vs_redis``: a no-op task on ``$BENCH_PG_URL``."""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ.get("BENCH_PG_URL", "")))


@app.task(name="bench.noop")
def noop() -> None:
    return None
