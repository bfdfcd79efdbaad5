"""``bench.conveyor_app`` plus a no-op task that takes one argument, for the payload curve of
``bench/cost_curve.py``: ``conveyor worker -A bench.cost_curve_app``."""

from __future__ import annotations

from bench.conveyor_app import app, noop

__all__ = ["app", "noop", "sink"]


@app.task(name="bench.sink", ignore_result=True)
def sink(data: str) -> None:
    """Take a payload and drop it (results off, as ``noop``)."""
    del data
