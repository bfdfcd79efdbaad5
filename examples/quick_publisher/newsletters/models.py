from django.conf import settings
from django.db import models
from django.utils import timezone


class Newsletter(models.Model):
    """A post sent by email to every verified user."""

    post = models.ForeignKey("publisher.Post", on_delete=models.CASCADE, related_name="newsletters")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)
    task_id = models.CharField(max_length=64, blank=True)
    #: Set once the chunks are queued: a redelivered send_newsletter does not queue them again.
    started = models.DateTimeField(null=True, blank=True)
    recipients = models.PositiveIntegerField(default=0)
    #: Filled in by the chord's summary task once every chunk is done.
    sent = models.PositiveIntegerField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created",)

    def __str__(self) -> str:
        return f"newsletter: {self.post.title}"


class Delivery(models.Model):
    """One row per (newsletter, recipient) sent: a chunk that runs twice skips these."""

    newsletter = models.ForeignKey(Newsletter, on_delete=models.CASCADE, related_name="deliveries")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["newsletter", "user"], name="one_delivery_per_user")
        ]
        verbose_name_plural = "deliveries"
