from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from publisher.models import Post

from .models import Newsletter
from .tasks import send_newsletter


@staff_member_required
def newsletter_index(request: HttpRequest) -> HttpResponse:
    newsletters = Newsletter.objects.select_related("post", "created_by")[:50]
    return render(request, "newsletters/index.html", {"newsletters": newsletters})


@staff_member_required
@require_POST
def send_post(request: HttpRequest, slug: str) -> HttpResponse:
    post = get_object_or_404(Post, slug=slug)
    newsletter = Newsletter.objects.create(post=post, created_by=request.user)
    result = send_newsletter.delay_on_commit(newsletter.pk)
    Newsletter.objects.filter(pk=newsletter.pk).update(task_id=result.id)
    messages.success(request, f'Sending "{post.title}" to every verified user.')
    return redirect("newsletters:index")
