from django.db import models
from django.utils import timezone


class OutboxMessage(models.Model):
    """An email the site sent, kept in the database instead of going to an SMTP server."""

    subject = models.CharField(max_length=998)
    from_email = models.CharField(max_length=320)
    to = models.TextField(help_text="Recipients, one per line.")
    body = models.TextField(blank=True)
    html_body = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ("-created", "-pk")

    def __str__(self) -> str:
        return self.subject

    @property
    def recipients(self) -> list[str]:
        return self.to.splitlines()
