"""Flow control example (docs/flow-control.md): unique tasks and batches.

Run it from the repository root:  .venv/bin/python examples/flow_control/unique_and_batches.py
It uses an SQLite file in a temporary folder and an in-process worker.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from conveyor import Conveyor, batch, current_batch
from conveyor.testing import TestWorker

folder = Path(tempfile.mkdtemp(prefix="conveyor-flow-"))
app = Conveyor("flow", broker=f"sqlite:///{folder}/flow.db")


# -- unique tasks -----------------------------------------------------------------------------
@app.task(unique_for=600)  # one per arguments while queued or running (at most 10 min)
def rebuild_report(report_id: int) -> str:
    return f"report {report_id} rebuilt"


@app.task(unique_for=2, unique_mode="debounce", unique_key=lambda text: "search-index")
def reindex(text: str) -> str:
    return f"indexed {text!r}"


first = rebuild_report.delay(42)
clicks = [rebuild_report.delay(42) for _ in range(99)]  # a user clicking a hundred times
print("same task:", all(r.id == first.id and r.duplicate_of == first.id for r in clicks))
print("other report queued:", rebuild_report.delay(7).duplicate_of is None)

typed = [reindex.delay(text) for text in ("c", "co", "con", "conv")]
print("debounced, replaced:", typed[-1].replaced == typed[-2].id)

# one report build per customer at a time, whatever the arguments
a = rebuild_report.apply_async((1,), unique_key="customer:9", unique_for=60)
b = rebuild_report.apply_async((2,), unique_key="customer:9", unique_for=60)
print("keyed duplicate:", b.duplicate_of == a.id)


# -- batches ----------------------------------------------------------------------------------
@app.task
def import_rows(chunk: int) -> int:
    if chunk == 0:  # the first chunk finds more work and adds it to its own batch
        found = current_batch(app)
        assert found is not None
        found.add(import_rows.s(100), import_rows.s(101))
    return chunk


@app.task
def notify(summary: dict[str, Any], what: str) -> None:
    print(f"{what}: {summary['total']} members, {summary['failed']} failed")


imports = batch(
    [import_rows.s(i) for i in range(5)],
    on_success=notify.s(what="all imported"),
    on_complete=notify.s(what="import finished"),
    description="nightly import",
)
running = imports.apply_async()
print("progress before the worker:", running.progress())

with TestWorker(app) as worker:
    worker.run_until_idle()
    print("report:", first.get(timeout=10), "| search:", typed[-1].get(timeout=10))
    worker.run_until_idle()  # the callbacks the batch sent
print("progress at the end:", running.progress(), "| completed:", running.completed)
app.close()
