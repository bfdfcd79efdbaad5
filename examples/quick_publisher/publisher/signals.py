"""Summarize a post after it is saved (once the transaction commits)."""

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
        generate_summary.delay_on_commit(instance.pk)
