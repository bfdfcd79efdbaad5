import hashlib

from django.conf import settings
from django.core.validators import FileExtensionValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone

IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "gif", "webp"]


def content_digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


class Post(models.Model):
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="posts"
    )
    title = models.CharField("title", max_length=200)
    slug = models.SlugField("slug", max_length=220, unique=True)
    content = models.TextField("content")
    cover = models.FileField(
        "cover image",
        upload_to="covers/%Y/%m/",
        blank=True,
        validators=[FileExtensionValidator(IMAGE_EXTENSIONS)],
    )
    created = models.DateTimeField("created", default=timezone.now)
    updated = models.DateTimeField("updated", auto_now=True)
    view_count = models.PositiveIntegerField("view count", default=0)
    #: Written by the generate_summary task, with the digest of the content it summarizes.
    summary = models.TextField("summary", blank=True)
    summary_digest = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ("-created",)

    def __str__(self) -> str:
        return f'"{self.title}" by {self.author}'

    def get_absolute_url(self) -> str:
        return reverse("publisher:post", kwargs={"slug": self.slug})

    @property
    def summary_is_current(self) -> bool:
        """True when the stored summary was made from the content as it is now."""
        return bool(self.summary) and self.summary_digest == content_digest(self.content)


class ReportDelivery(models.Model):
    """One row per view-count report sent: (author, period) is sent at most once."""

    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="report_deliveries"
    )
    period = models.CharField(max_length=32)
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["author", "period"], name="one_report_per_period")
        ]
        verbose_name_plural = "report deliveries"

    def __str__(self) -> str:
        return f"report for {self.author} ({self.period})"
