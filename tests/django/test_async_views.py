"""Async views: ``await task.adelay()`` and ``await result.aget()`` never block the loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from django.test import AsyncClient

from conveyor import Conveyor

from .conftest import DjangoTestWorker
from .testproj.shop.tasks import slow

pytestmark = pytest.mark.django_db(transaction=True)


def test_enqueue_and_wait_from_async_views(app: Conveyor, worker: DjangoTestWorker) -> None:
    async def main() -> tuple[Any, Any]:
        client = AsyncClient()
        created = await client.post("/orders/async/")
        task_id = created.json()["task_id"]
        waited = await client.get(f"/tasks/{task_id}/wait/")
        return created.status_code, waited.json()

    status, body = asyncio.run(main())
    assert status == 200
    assert body == {"value": 5}


def test_waiting_does_not_block_the_event_loop(app: Conveyor, worker: DjangoTestWorker) -> None:
    async def main() -> tuple[str, int, float]:
        result = await slow.adelay(0.5)
        ticks = 0
        running = True

        async def ticker() -> None:
            nonlocal ticks
            while running:
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        began = time.monotonic()
        value = await result.aget(timeout=10)
        elapsed = time.monotonic() - began
        running = False
        await ticking
        return value, ticks, elapsed

    value, ticks, elapsed = asyncio.run(main())
    assert value == "done"
    assert elapsed >= 0.3
    assert ticks >= elapsed / 0.01 * 0.5, f"the loop ran only {ticks} times in {elapsed:.2f}s"
