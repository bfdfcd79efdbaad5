from django.conf import settings
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from .models import OutboxMessage


def _enabled() -> None:
    if not settings.OUTBOX_ENABLED:
        raise Http404("the outbox is only shown in the demo")


def _messages(request: HttpRequest) -> tuple[str, QuerySet[OutboxMessage]]:
    _enabled()
    to = request.GET.get("to", "").strip()
    messages = OutboxMessage.objects.all()
    return to, messages.filter(to__icontains=to) if to else messages


def outbox(request: HttpRequest) -> HttpResponse:
    to, messages = _messages(request)
    shown = list(messages[:100])
    context = {"messages_sent": shown, "to": to, "latest": shown[0].pk if shown else 0}
    return render(request, "outbox/list.html", context)


def latest(request: HttpRequest) -> JsonResponse:
    """The id of the newest message (to ``?to=``): the outbox page reloads when it changes."""
    _, messages = _messages(request)
    return JsonResponse({"latest": messages.values_list("pk", flat=True).first() or 0})


def message_detail(request: HttpRequest, pk: int) -> HttpResponse:
    _enabled()
    message = get_object_or_404(OutboxMessage, pk=pk)
    return render(request, "outbox/detail.html", {"message": message})
