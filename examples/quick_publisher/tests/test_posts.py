import threading

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.test import Client
from django.urls import reverse

from publisher.models import Post
from publisher.summarizer import summarize
from publisher.tasks import generate_summary

CONTENT = (
    "Task queues move slow work out of the request. A worker runs each task later. "
    "Tasks should be small and idempotent, so that a retried task does no harm. "
    "The weather was nice that day. "
    "Pass ids to tasks, not objects, so that each task loads fresh data from the database."
)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def test_summarizer_is_deterministic_and_extractive():
    summary = summarize(CONTENT)
    assert summary == summarize(CONTENT)
    assert "weather" not in summary  # the off-topic sentence is left out
    assert summary.startswith("Task queues move slow work out of the request.")
    assert summarize("One sentence only.") == "One sentence only."
    assert summarize("") == ""
    assert len(summarize("word " * 500, max_chars=100)) <= 100


@pytest.mark.django_db
def test_create_post_queues_summary_on_commit(client, author, django_capture_on_commit_callbacks):
    client.force_login(author)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            reverse("publisher:create"), {"title": "Task queues 101", "content": CONTENT}
        )
    post = Post.objects.get()
    assert response.url == post.get_absolute_url() == "/posts/task-queues-101/"
    assert len(callbacks) == 1  # generate_summary.delay_on_commit(post.pk)
    assert not post.summary_is_current


@pytest.mark.django_db(transaction=True)
def test_summary_is_generated_after_save_and_shown(client, author, worker):
    client.force_login(author)
    client.post(reverse("publisher:create"), {"title": "Task queues 101", "content": CONTENT})
    post = Post.objects.get()
    page = client.get(post.get_absolute_url())
    assert b"Being written by a background task" in page.content
    assert client.get(reverse("publisher:summary", args=[post.slug])).json() == {
        "ready": False,
        "summary": "",
    }

    worker.run_until_idle()
    post.refresh_from_db()
    assert post.summary == summarize(CONTENT)
    assert post.summary_is_current
    assert post.summary.encode() in client.get(post.get_absolute_url()).content
    assert client.get(reverse("publisher:summary", args=[post.slug])).json()["ready"] is True

    # Editing the content queues a new summary (the worker is running: it may be done already).
    client.post(
        reverse("publisher:edit", args=[post.slug]),
        {"title": post.title, "slug": post.slug, "content": "A new text. It is short."},
    )
    worker.run_until_idle()
    post.refresh_from_db()
    assert post.summary == "A new text. It is short."


@pytest.mark.django_db
def test_a_summary_of_older_content_is_not_shown(client, author):
    post = Post.objects.create(author=author, title="T", slug="t", content=CONTENT)
    generate_summary(post.pk)
    Post.objects.filter(pk=post.pk).update(content="Edited meanwhile. The summary is stale.")
    post.refresh_from_db()
    assert post.summary and not post.summary_is_current
    assert b"Being written by a background task" in client.get(post.get_absolute_url()).content


@pytest.mark.django_db
def test_generate_summary_is_idempotent(author):
    post = Post.objects.create(author=author, title="T", slug="t", content=CONTENT)
    assert generate_summary(post.pk) == "summarized"
    assert generate_summary(post.pk) == "up to date"
    assert generate_summary(10**9) == "gone"


@pytest.mark.django_db
def test_view_count_counts_visitors_not_the_author(client, author):
    post = Post.objects.create(author=author, title="T", slug="t", content=CONTENT)
    for expected in (1, 2):
        response = client.get(post.get_absolute_url())
        assert response.context["post"].view_count == expected
    client.force_login(author)
    client.get(post.get_absolute_url())
    post.refresh_from_db()
    assert post.view_count == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_views_lose_no_update(author):
    post = Post.objects.create(author=author, title="T", slug="t", content=CONTENT)
    threads, views_each = 8, 10
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def visit() -> None:
        try:
            browser = Client()
            start.wait()
            for _ in range(views_each):
                assert browser.get(post.get_absolute_url()).status_code == 200
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=visit) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert errors == []
    post.refresh_from_db()
    assert post.view_count == threads * views_each


@pytest.mark.django_db
def test_only_the_author_edits(client, author, make_user):
    post = Post.objects.create(author=author, title="T", slug="t", content=CONTENT)
    client.force_login(make_user("other@example.com"))
    assert client.get(reverse("publisher:edit", args=[post.slug])).status_code == 403


@pytest.mark.django_db
def test_slugs_are_unique_and_never_shadow_pages(client, author):
    client.force_login(author)
    for _ in range(2):
        client.post(reverse("publisher:create"), {"title": "Same title", "content": "x"})
    client.post(reverse("publisher:create"), {"title": "New", "content": "x"})
    assert sorted(Post.objects.values_list("slug", flat=True)) == [
        "new-2",
        "same-title",
        "same-title-2",
    ]
    response = client.post(
        reverse("publisher:create"), {"title": "X", "slug": "mine", "content": "x"}
    )
    assert "slug" in response.context["form"].errors


@pytest.mark.django_db
def test_cover_image_is_optional_and_must_be_an_image(client, author):
    client.force_login(author)
    bad = SimpleUploadedFile("cover.png", b"not an image", content_type="image/png")
    response = client.post(
        reverse("publisher:create"), {"title": "Bad", "content": "x", "cover": bad}
    )
    assert "cover" in response.context["form"].errors
    good = SimpleUploadedFile("cover.png", PNG, content_type="image/png")
    client.post(reverse("publisher:create"), {"title": "Good", "content": "x", "cover": good})
    post = Post.objects.get(slug="good")
    assert post.cover.name.startswith("covers/")
    assert b'class="cover"' in client.get(post.get_absolute_url()).content


@pytest.mark.django_db
def test_summaries_are_rate_limited_per_author(
    client, author, make_user, conveyor_app, django_capture_on_commit_callbacks
):
    from conveyor.message import decode_envelope

    other = make_user("grace@example.com")
    for user, title in ((author, "One"), (other, "Two")):
        client.force_login(user)
        with django_capture_on_commit_callbacks(execute=True):
            client.post(reverse("publisher:create"), {"title": title, "content": CONTENT})
    queue = conveyor_app.conf.task_default_queue
    leased = conveyor_app.broker.lease([queue], 10, 0)
    conveyor_app.broker.release(leased)
    keys = {decode_envelope(d.body).headers.get("conveyor_rate_key") for d in leased}
    assert keys == {f"author:{author.pk}", f"author:{other.pk}"}  # a bucket per author
    assert generate_summary.rate_limit == "30/m"
