"""Summarize a post after it is saved (once the transaction commits), at most
``SUMMARY_RATE_LIMIT`` per author across all workers (the summaries of one author's burst of
edits wait in the broker; other authors' go ahead)."""

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from .models import Post
from .tasks import generate_summary


@receiver(post_save, sender=Post, dispatch_uid="publisher.summarize_post")
def post_saved(sender: type[Post], instance: Post, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    if kwargs.get("raw") or (update_fields is not None and "content" not in update_fields):
        return
    if not instance.summary_is_current:
        generate_summary.apply_async(
            (instance.pk,), on_commit=True, rate_key=f"author:{instance.author_id}"
        )
