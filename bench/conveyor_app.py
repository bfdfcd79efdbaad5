"""The Conveyor side of the benchmarks: ``conveyor worker -A bench.conveyor_app``.

The broker comes from ``$CONVEYOR_BROKER_URL`` (read by Conveyor itself); everything else is
Conveyor's default. ``noop`` stores no result (``ignore_result=True``); ``noop_result`` does.
"""

from __future__ import annotations

from conveyor import Conveyor

app = Conveyor("bench")


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    return None


@app.task(name="bench.noop_result")
def noop_result() -> None:
    return None
