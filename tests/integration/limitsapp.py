"""Tasks for the flow-control process tests: ``conveyor worker -A tests.integration.limitsapp``.

The broker comes from ``$CONVEYOR_BROKER_URL``; ``$LIMITSAPP_RATE`` is the rate of the
rate-limited tasks (default ``20/s``), ``$WORKERAPP_SETTINGS`` (JSON) adds settings. Tasks
append ``pid event time`` lines to the file given as their first argument.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from conveyor import Conveyor

DEFAULT_SETTINGS: dict[str, Any] = {"broker_lease_timeout": 1.0, "broker_sweep_interval": 0.5}


def create_app(broker: str | None = None, **settings: Any) -> Conveyor:
    merged = {**DEFAULT_SETTINGS, **json.loads(os.environ.get("WORKERAPP_SETTINGS") or "{}")}
    app = Conveyor("limitsapp", broker=broker, **{**merged, **settings})
    register(app, os.environ.get("LIMITSAPP_RATE") or "20/s")
    return app


def mark(path: str, event: str) -> None:
    with open(path, "a") as file:
        file.write(f"{os.getpid()} {event} {time.time():.6f}\n")


def events(path: str | Path, event: str) -> list[float]:
    """The times of ``event`` lines in ``path``, sorted."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    return sorted(float(p[2]) for line in lines if len(p := line.split()) == 3 and p[1] == event)


def register(app: Conveyor, rate: str) -> None:
    @app.task(name="limits.tick", rate_limit=rate)
    def tick(path: str) -> None:
        mark(path, "start")

    @app.task(name="limits.keyed", rate_limit=rate, rate_limit_key=lambda path, who: who)
    def keyed(path: str, who: str) -> None:
        mark(path, who)

    @app.task(name="limits.hold", concurrency_limit=2)
    def hold(path: str, seconds: float) -> None:
        mark(path, "start")
        time.sleep(seconds)  # the work the slot is held for
        mark(path, "end")

    @app.task(
        name="limits.mutex",
        concurrency_limit=1,
        concurrency_key=lambda path, account, seconds: f"account:{account}",
    )
    def mutex(path: str, account: int, seconds: float) -> None:
        mark(path, f"start-{account}")
        time.sleep(seconds)  # the work the slot is held for
        mark(path, f"end-{account}")


app = create_app()
