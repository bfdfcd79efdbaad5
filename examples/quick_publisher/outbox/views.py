from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from .models import OutboxMessage


def _enabled() -> None:
    if not settings.OUTBOX_ENABLED:
        raise Http404("the outbox is only shown in the demo")


def outbox(request: HttpRequest) -> HttpResponse:
    _enabled()
    to = request.GET.get("to", "").strip()
    messages = OutboxMessage.objects.all()
    if to:
        messages = messages.filter(to__icontains=to)
    return render(request, "outbox/list.html", {"messages_sent": messages[:100], "to": to})


def message_detail(request: HttpRequest, pk: int) -> HttpResponse:
    _enabled()
    message = get_object_or_404(OutboxMessage, pk=pk)
    return render(request, "outbox/detail.html", {"message": message})
