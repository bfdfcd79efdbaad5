"""The worker app of the chaos scenarios: ``conveyor worker -A tests.chaos.chaosapp``.

The broker comes from ``$CONVEYOR_BROKER_URL``, settings (JSON) from ``$CHAOSAPP_SETTINGS``.
``chaos.work`` appends ``start <id> <pid> <time>`` and ``done <id> <pid> <time>`` lines to a
file around a short sleep: a start without a done in the same process is a run that was
interrupted; two dones of one id are a duplicate.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from conveyor import Conveyor


def create_app(broker: str | None = None, **settings: Any) -> Conveyor:
    merged = {**json.loads(os.environ.get("CHAOSAPP_SETTINGS") or "{}"), **settings}
    app = Conveyor("chaosapp", broker=broker, set_as_default=False, **merged)

    @app.task(name="chaos.work")
    def work(path: str, mid: str, seconds: float) -> None:
        _mark(path, "start", mid)
        time.sleep(seconds)
        _mark(path, "done", mid)

    @app.task(name="chaos.poison")
    def poison(path: str, mid: str) -> None:
        _mark(path, "poison", mid)
        os.kill(os.getpid(), signal.SIGKILL)

    @app.task(name="chaos.tiny")
    def tiny(n: int) -> int:
        return n + 1

    return app


def _mark(path: str, what: str, mid: str) -> None:
    with open(path, "a") as file:
        file.write(f"{what} {mid} {os.getpid()} {time.time():.3f}\n")


app = create_app()
