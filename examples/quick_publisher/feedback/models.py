from django.db import models
from django.utils import timezone


class Feedback(models.Model):
    name = models.CharField("name", max_length=200)
    email = models.EmailField("email")
    message = models.TextField("message")
    created = models.DateTimeField("received", default=timezone.now)
    #: Set by the tasks once each email went out, so that a redelivered task sends nothing.
    thanked_at = models.DateTimeField(null=True, blank=True)
    staff_notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created",)
        verbose_name_plural = "feedback"

    def __str__(self) -> str:
        return f"feedback from {self.email}"
