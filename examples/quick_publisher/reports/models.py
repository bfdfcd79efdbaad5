from django.db import models
from django.urls import reverse
from django.utils import timezone


class AnnualReport(models.Model):
    """A generated report: the CSV file the ``generate_report`` task wrote.

    ``task_id`` is unique, so a redelivered task rewrites its own report instead of adding one.
    """

    year = models.PositiveSmallIntegerField("year")
    task_id = models.CharField(max_length=64, unique=True)
    csv = models.FileField("CSV file", upload_to="reports/")
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created",)

    def __str__(self) -> str:
        return f"annual report {self.year}"

    def get_absolute_url(self) -> str:
        return reverse("reports:download", kwargs={"pk": self.pk})
