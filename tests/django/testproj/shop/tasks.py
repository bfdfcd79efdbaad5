"""Tasks of the shop app: Conveyor ``shared_task`` and ``django.tasks`` functions side by side."""

import asyncio
import os
import time

from django.db import connection
from django.tasks import TaskContext, task

from conveyor import shared_task

from .models import Order


@shared_task
def add(x: int, y: int) -> int:
    return x + y


@shared_task
def confirm_order(order_id: int) -> str:
    """Uses the ORM: the order must exist (it was committed before the task was sent)."""
    order = Order.objects.get(pk=order_id)
    order.confirmed = True
    order.confirmations += 1
    order.save()
    return order.item


@shared_task
def count_orders() -> int:
    return Order.objects.count()


@shared_task
def break_connection() -> None:
    """Close the raw database connection behind Django's back, like a server restart."""
    connection.ensure_connection()
    connection.connection.close()


@shared_task
def worker_pid() -> int:
    return os.getpid()


@shared_task
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@shared_task
def fail(message: str) -> None:
    raise ValueError(message)


# -- django.tasks ---------------------------------------------------------------------------
@task
def send_welcome(email: str, *, name: str = "") -> dict[str, str]:
    return {"to": email, "body": f"Welcome {name}".strip()}


@task(queue_name="emails", priority=50)
def urgent_email(email: str) -> str:
    return f"urgent:{email}"


@task
def crash(message: str) -> None:
    raise KeyError(message)


@task(takes_context=True)
def flaky(context: TaskContext, failures: int) -> int:
    """Fails its first ``failures`` attempts."""
    if context.attempt <= failures:
        raise ConnectionError(f"attempt {context.attempt} failed")
    return context.attempt


@task
async def async_double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


@task
def count_with_orm() -> int:
    return Order.objects.count()
