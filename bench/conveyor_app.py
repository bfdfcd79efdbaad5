"""The Conveyor side of the benchmarks: ``conveyor worker -A bench.conveyor_app``.

The broker comes from ``$CONVEYOR_BROKER_URL`` (read by Conveyor itself); everything else is
Conveyor's default (``BENCH_EVENTS=off`` turns events off). ``noop`` stores no result (``ignore_result=True``); ``noop_result`` does.
"""

from __future__ import annotations

import os

from conveyor import Conveyor

#: ``BENCH_EVENTS=off``: the workers (and this producer) emit no events.
_EVENTS_OFF = {"worker_send_task_events": False, "task_send_sent_event": False}
app = Conveyor("bench", **(_EVENTS_OFF if os.environ.get("BENCH_EVENTS") == "off" else {}))


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    return None


@app.task(name="bench.noop_result")
def noop_result() -> None:
    return None
