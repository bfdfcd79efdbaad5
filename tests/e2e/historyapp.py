"""Tasks for the dashboard's history browser tests: ``conveyor -A tests.e2e.historyapp``.

The broker comes from ``$CONVEYOR_BROKER_URL`` (results follow it). Events are on and the
result store keeps arguments (``result_extended``), so a failed task can be retried from the
dashboard.
"""

from __future__ import annotations

import time
from typing import Any

from conveyor import Conveyor

SETTINGS: dict[str, Any] = {
    "worker_send_task_events": True,
    "result_extended": True,
    "events_flush_interval": 0.2,
    "broker_lease_timeout": 5.0,
}


def create_app(broker: str | None = None) -> Conveyor:
    app = Conveyor("historyapp", broker=broker, **SETTINGS)

    @app.task(name="orders.charge")
    def charge(order: int, card: str = "", password: str = "") -> str:
        if card == "declined":
            raise ValueError(f"order {order}: card declined")
        return f"charged {order}"

    @app.task(name="orders.total")
    def total(*values: int) -> int:
        return sum(values)

    @app.task(name="reports.build", bind=True)
    def build(self: Any, steps: int, pause: float) -> str:
        for step in range(steps):
            self.update_state(state="PROGRESS", meta={"current": step, "total": steps})
            time.sleep(pause)
        return f"{steps} pages"

    return app


app = create_app()
