"""The producer app of the doctor tests: ``conveyor -A tests.integration.doctorapp doctor``.

The workers' tasks (``tests/integration/workerapp.py``) plus two only this app has:
``workerapp.unregistered`` (routed to ``default``, which the workers consume) and
``workerapp.reports`` (routed to ``reports``, which no worker consumes). Settings come from
``$DOCTORAPP_SETTINGS`` (JSON), the broker from ``$CONVEYOR_BROKER_URL``.
"""

from __future__ import annotations

import json
import os

from tests.integration.workerapp import create_app

app = create_app(**json.loads(os.environ.get("DOCTORAPP_SETTINGS") or "{}"))


@app.task(name="workerapp.unregistered")
def unregistered() -> None:
    """Registered here, in no worker."""


@app.task(name="workerapp.reports", queue="reports")
def reports() -> None:
    """Routed to a queue no worker consumes."""
