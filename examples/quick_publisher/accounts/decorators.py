from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect


def verified_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Let in logged-in users whose email address is verified; tell the others why not."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_verified:
            messages.warning(request, "Verify your email address first: see the link we sent.")
            return redirect("accounts:check_email")
        return view(request, *args, **kwargs)

    return login_required(wrapper)
