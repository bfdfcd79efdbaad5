"""Tasks for the Celery-port process tests: ``conveyor worker -A tests.integration.portapp``.

The broker comes from ``$CONVEYOR_BROKER_URL``; tasks that must be observed append a line
(``pid text``) to a file given as an argument. ``$PORTAPP_LOGFILE`` makes this module
connect a ``setup_logging`` receiver (as a Celery project's app module does) that logs to
that file.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from conveyor import Conveyor, Task, signals

app = Conveyor(
    "portapp",
    broker=os.environ.get("CONVEYOR_BROKER_URL"),
    broker_lease_timeout=1.0,
    broker_sweep_interval=1.0,
    broker_transport_options=(
        {"key_prefix": os.environ["PORTAPP_KEY_PREFIX"]}
        if os.environ.get("PORTAPP_KEY_PREFIX")
        else {}
    ),
)


def mark(path: str, text: str) -> None:
    with open(path, "a") as file:
        file.write(f"{os.getpid()} {text}\n")


class CustomTask(Task):  # type: ignore[type-arg]
    """Seed 003's CustomTask: wraps every execution, sees its request."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        path = str(args[0])
        mark(path, f"before {self.request.id}")
        result = super().__call__(*args, **kwargs)
        mark(path, f"after {self.request.id}")
        return result


@app.task(base=CustomTask, name="portapp.wrapped")
def wrapped(path: str, x: int) -> int:
    mark(path, "body")
    return x * 2


@app.task(base=CustomTask, name="portapp.wrapped_async")
async def wrapped_async(path: str, x: int) -> int:
    mark(path, "body")
    return x * 3


@app.task(name="portapp.limited", rate_limit="5/s")
def limited() -> float:
    return time.time()


@app.task(name="portapp.boom")
def boom(x: int) -> None:
    raise ValueError(f"boom {x}")


@app.task(name="portapp.on_error")
def on_error(request: Any, exc: BaseException, traceback: str, path: str) -> None:
    mark(
        path, f"errback {request.id} {request.args} {type(exc).__name__} {'Traceback' in traceback}"
    )


@app.task(name="portapp.flaky", autoretry_for=(OSError,), retry_kwargs={"countdown": 600})
def flaky() -> None:
    raise OSError("down")


if os.environ.get("PORTAPP_LOGFILE"):
    logfile = os.environ["PORTAPP_LOGFILE"]

    @signals.setup_logging.connect
    def configure(loglevel: int, **kwargs: object) -> None:
        handler = logging.FileHandler(logfile)
        handler.setFormatter(logging.Formatter("PORTAPP %(levelname)s %(message)s"))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(loglevel)
