"""Post tasks: the summary, and the view-count report (a periodic fan-out of small tasks)."""

import logging
from datetime import datetime
from typing import Any

from conveyor import Task, group, shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import IntegrityError
from django.template.loader import render_to_string
from django.utils import timezone

from quick_publisher.mail import MAIL_ERRORS

from .models import Post, ReportDelivery, content_digest
from .summarizer import summarize

logger = logging.getLogger(__name__)


@shared_task(rate_limit=settings.SUMMARY_RATE_LIMIT)
def generate_summary(post_id: int) -> str:
    """Summarize a post's current content. Idempotent: an up-to-date summary is left alone.

    Summarizing stands in for a paid API with a quota per customer: the rate limit is kept
    per author (the caller gives ``rate_key="author:<id>"``, see ``signals.py``), for the
    whole cluster, and a summary over it waits in the broker, not in a worker."""
    post = Post.objects.filter(pk=post_id).only("content", "summary_digest").first()
    if post is None:
        return "gone"
    digest = content_digest(post.content)
    if post.summary_digest == digest:
        return "up to date"
    # update(), not save(): writes two columns only and sends no post_save (no new task).
    Post.objects.filter(pk=post_id).update(summary=summarize(post.content), summary_digest=digest)
    return "summarized"


@shared_task(bind=True)
def send_view_count_report(self: Task[Any, Any]) -> int:
    """Periodic (beat): queue one report task per author. Returns how many were queued.

    The period - the run's due time, which beat sends in the ``scheduled_at`` header - travels
    with each task, so that a retried or redelivered one is recognised as already sent.
    """
    scheduled_at = self.request.headers.get("scheduled_at")
    when = datetime.fromisoformat(scheduled_at) if scheduled_at else timezone.now()
    period = timezone.localtime(when).strftime("%Y-%m-%d %H:%M:%S")
    author_ids = list(
        get_user_model()
        .objects.filter(is_active=True, posts__isnull=False)
        .distinct()
        .values_list("pk", flat=True)
    )
    if author_ids:  # one bulk publish for all of them
        group(send_author_report.s(author_id, period) for author_id in author_ids).apply_async()
    return len(author_ids)


@shared_task(
    autoretry_for=MAIL_ERRORS,
    retry_backoff=True,  # 1 s, 2 s, 4 s ... between attempts
    retry_backoff_max=600,
    retry_jitter=True,  # a random part of that, so failures do not retry in lockstep
    max_retries=8,
)
def send_author_report(author_id: int, period: str) -> str:
    """Email one author a table of their posts and view counts, once per period.

    A redelivered or retried copy finds the period recorded and sends nothing. The record is
    written after the mail went out: a worker killed in between sends it again on
    redelivery (at least once), rather than never.
    """
    if ReportDelivery.objects.filter(author_id=author_id, period=period).exists():
        return "already sent"
    author = get_user_model().objects.filter(pk=author_id, is_active=True).first()
    if author is None:
        return "no such author"
    posts = list(Post.objects.filter(author=author).order_by("-view_count", "title"))
    if not posts:
        return "no posts"
    context = {
        "author": author,
        "posts": posts,
        "period": period,
        "total_views": sum(p.view_count for p in posts),
        "site_url": settings.SITE_URL,
        "site_name": settings.SITE_NAME,
    }
    send_mail(
        subject=f"Your {settings.SITE_NAME} activity ({period})",
        message=render_to_string("publisher/email/view_report.txt", context),
        html_message=render_to_string("publisher/email/view_report.html", context),
        from_email=None,
        recipient_list=[author.email],
    )
    try:
        ReportDelivery.objects.create(author=author, period=period)
    except IntegrityError:  # another copy of this task got there first
        logger.info("report for %s (%s) was sent twice", author_id, period)
    return "sent"
