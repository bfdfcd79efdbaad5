import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse

from conveyor import AsyncResult

from .models import Order
from .tasks import add, confirm_order


def create_order(request: HttpRequest) -> JsonResponse:
    """The seed pattern: save, enqueue on commit, return the task id at once."""
    data = json.loads(request.body or b"{}")
    with transaction.atomic():
        order = Order.objects.create(item=data.get("item", "book"))
        result = confirm_order.delay_on_commit(order.pk)
        if data.get("fail"):
            transaction.set_rollback(True)
    return JsonResponse({"order": order.pk, "task_id": result.id})


async def create_order_async(request: HttpRequest) -> JsonResponse:
    result = await add.adelay(2, 3)
    return JsonResponse({"task_id": result.id})


def task_status(request: HttpRequest, task_id: str) -> JsonResponse:
    snap = AsyncResult(task_id).snapshot()  # one read: state and ready always agree
    return JsonResponse({"state": snap.state, "ready": snap.ready})


async def wait_for_task(request: HttpRequest, task_id: str) -> JsonResponse:
    value = await AsyncResult(task_id).aget(timeout=10)
    return JsonResponse({"value": value})
