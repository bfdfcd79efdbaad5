"""Interim ``group`` and ``chord`` (until ``conveyor.canvas`` has them): the chord's callback
is sent by a join task that waits, retrying, until every header task is ready."""

from collections.abc import Iterable
from typing import Any

from conveyor import AsyncResult, Signature, Task, shared_task


class group:
    def __init__(self, signatures: Iterable[Signature]) -> None:
        self.signatures = list(signatures)


class chord:
    def __init__(self, header: group) -> None:
        self.header = header

    def __call__(self, callback: Signature) -> AsyncResult[Any]:
        ids = [sig.delay().id for sig in self.header.signatures]
        return chord_join.delay(ids, callback.to_dict())


@shared_task(bind=True, max_retries=None)
def chord_join(self: Task[Any, Any], ids: list[str], callback: dict[str, Any]) -> str:
    results = [AsyncResult(task_id, self.app) for task_id in ids]
    if not all(result.ready() for result in results):
        raise self.retry(countdown=0.2)
    values = [result.get(disable_sync_subtasks=False) for result in results]
    return Signature.from_dict(callback, self.app).delay(values).id
