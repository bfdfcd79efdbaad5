import uuid

from django.contrib import messages
from django.contrib.auth import login
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from .forms import SignUpForm
from .models import User


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        # The account and its verification email commit together: the post_save receiver
        # queues the email inside this transaction (see accounts/signals.py).
        with transaction.atomic():
            user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("accounts:check_email")
    return render(request, "accounts/signup.html", {"form": form})


def check_email(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/check_email.html")


def verify(request: HttpRequest, uuid: uuid.UUID) -> HttpResponse:
    """Verify the account the link was sent to. Clicking it again changes nothing."""
    # One UPDATE: two clicks at once cannot both "verify", and nothing is read then written.
    verified_now = User.objects.filter(verification_uuid=uuid, is_verified=False).update(
        is_verified=True
    )
    if not verified_now and not User.objects.filter(verification_uuid=uuid).exists():
        raise Http404("no account has this verification link")
    if verified_now:
        messages.success(request, "Your email address is verified. Welcome!")
    return render(request, "accounts/verified.html", {"first_time": bool(verified_now)})
