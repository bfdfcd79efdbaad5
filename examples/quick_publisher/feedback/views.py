from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from .forms import FeedbackForm
from .tasks import notify_staff_of_feedback, send_thank_you_email


@require_http_methods(["GET", "POST"])
def feedback(request: HttpRequest) -> HttpResponse:
    initial = {}
    if request.user.is_authenticated:
        initial = {"name": request.user.get_full_name(), "email": request.user.email}
    form = FeedbackForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        item = form.save()
        # Both emails are sent by the worker: the response does not wait for a mail server.
        send_thank_you_email.delay_on_commit(item.pk)
        notify_staff_of_feedback.delay_on_commit(item.pk)
        return redirect("feedback:thanks")
    return render(request, "feedback/feedback.html", {"form": form})


def thanks(request: HttpRequest) -> HttpResponse:
    return render(request, "feedback/thanks.html")
