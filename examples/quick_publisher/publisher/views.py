from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import F
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from accounts.decorators import verified_required

from .forms import PostForm
from .models import Post


def home(request: HttpRequest) -> HttpResponse:
    posts = Post.objects.select_related("author")[:20]
    return render(request, "publisher/home.html", {"posts": posts})


def view_post(request: HttpRequest, slug: str) -> HttpResponse:
    post = get_object_or_404(Post.objects.select_related("author"), slug=slug)
    if request.user != post.author:
        # One atomic UPDATE ... SET view_count = view_count + 1: concurrent views never
        # overwrite each other (reading, adding one and saving would lose updates).
        Post.objects.filter(pk=post.pk).update(view_count=F("view_count") + 1)
        post.refresh_from_db(fields=["view_count"])
    return render(request, "publisher/post.html", {"post": post})


def post_summary(request: HttpRequest, slug: str) -> JsonResponse:
    """The summary once the task has written it (polled by the post page)."""
    post = get_object_or_404(Post, slug=slug)
    ready = post.summary_is_current
    return JsonResponse({"ready": ready, "summary": post.summary if ready else ""})


@login_required
def my_posts(request: HttpRequest) -> HttpResponse:
    posts = Post.objects.filter(author=request.user)
    return render(request, "publisher/my_posts.html", {"posts": posts})


@verified_required
@require_http_methods(["GET", "POST"])
def create_post(request: HttpRequest) -> HttpResponse:
    form = PostForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        form.instance.author = request.user
        post = form.save()  # the post_save receiver queues the summary task
        messages.success(request, "Post published. Its summary is on the way.")
        return redirect(post)
    return render(request, "publisher/post_form.html", {"form": form, "creating": True})


@verified_required
@require_http_methods(["GET", "POST"])
def edit_post(request: HttpRequest, slug: str) -> HttpResponse:
    post = get_object_or_404(Post, slug=slug)
    if post.author != request.user:
        raise PermissionDenied
    form = PostForm(request.POST or None, request.FILES or None, instance=post)
    if request.method == "POST" and form.is_valid():
        post = form.save()
        messages.success(request, "Post saved.")
        return redirect(post)
    return render(request, "publisher/post_form.html", {"form": form, "post": post})
