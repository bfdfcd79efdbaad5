"""The worker app of the injection test: ``conveyor worker -A tests.fuzz.fuzzapp``.

The broker comes from ``$CONVEYOR_BROKER_URL``, settings (JSON) from ``$FUZZAPP_SETTINGS``.
``fuzzapp.record(path, mid)`` appends ``mid`` to ``path``: one line per run.
"""

from __future__ import annotations

import json
import os
from typing import Any

from conveyor import Conveyor

GOOD_TASK = "fuzzapp.record"


def create_app(broker: str | None = None, **settings: Any) -> Conveyor:
    merged = {**json.loads(os.environ.get("FUZZAPP_SETTINGS") or "{}"), **settings}
    app = Conveyor("fuzzapp", broker=broker, set_as_default=False, **merged)

    @app.task(name=GOOD_TASK)
    def record(path: str, mid: str) -> None:
        with open(path, "a") as file:
            file.write(f"{mid}\n")

    return app


app = create_app()
