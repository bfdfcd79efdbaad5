"""The app that ``tests/integration/test_signals_processes.py`` starts workers with (``-A``).

Its receivers append ``pid signal`` lines to the file named by ``$SIGNALS_RECORD``. It lives
apart from the test module: signals are process-wide, so receivers connected when pytest
imported the test module would stay connected for every later test in the session.
"""

from __future__ import annotations

import os

from conveyor import signals
from tests.integration.workerapp import create_app, mark

app = create_app()


def _record(signal: signals.Signal) -> None:
    def receiver(**kwargs: object) -> None:
        path = os.environ.get("SIGNALS_RECORD")
        if path:
            mark(path, signal.name)

    signal.connect(receiver, dispatch_uid=f"signalsapp.{signal.name}")


for _signal in (
    signals.worker_init,
    signals.worker_shutdown,
    signals.worker_process_init,
    signals.worker_process_shutdown,
    signals.task_success,
):
    _record(_signal)
