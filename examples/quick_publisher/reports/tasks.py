"""The annual report: a long task that reports its progress while it runs."""

import csv
import io
import time
from calendar import month_name
from datetime import datetime
from typing import Any

from conveyor import Task, shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.db.models import Count, Sum
from django.utils import timezone

from feedback.models import Feedback
from publisher.models import Post

from .models import AnnualReport

COLUMNS = ["month", "posts published", "views of those posts", "new users", "feedback received"]


def _report_key(year: int) -> str:
    return f"annual-report:{year}"


# One build per year at a time: a second click (or a second staff member) while the report of
# that year is queued or running gets the build under way, not another one (unique tasks,
# docs/flow-control.md). After an hour the key is free even if the build never ended.
@shared_task(bind=True, unique_for=3600, unique_key=_report_key)
def generate_report(self: Task[Any, Any], year: int) -> dict[str, Any]:
    """Add up the site's activity month by month and store it as a CSV file.

    Progress is published with ``update_state(state="PROGRESS", meta={"percent": ...})`` and
    read by the status endpoint the report page polls. Returns the report's id and URL.
    """
    now = timezone.localtime()
    if not 2000 <= year <= now.year:
        raise ValueError(f"There is no report for {year}: pick a year from 2000 to {now.year}.")
    tz = timezone.get_current_timezone()
    rows = []
    for month in range(1, 13):
        self.update_state(
            state="PROGRESS",
            meta={"percent": round((month - 1) * 100 / 12), "step": f"{month_name[month]}"},
        )
        start = datetime(year, month, 1, tzinfo=tz)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
        posts = Post.objects.filter(created__gte=start, created__lt=end).aggregate(
            count=Count("pk"), views=Sum("view_count")
        )
        rows.append(
            [
                f"{year}-{month:02d}",
                posts["count"],
                posts["views"] or 0,
                get_user_model()
                .objects.filter(date_joined__gte=start, date_joined__lt=end)
                .count(),
                Feedback.objects.filter(created__gte=start, created__lt=end).count(),
            ]
        )
        time.sleep(settings.REPORT_STEP_DELAY)  # stands in for slow work (0 in production)
    self.update_state(state="PROGRESS", meta={"percent": 100, "step": "Saving"})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    writer.writerow(["total", *(sum(row[i] for row in rows) for i in range(1, len(COLUMNS)))])
    report, _ = AnnualReport.objects.get_or_create(
        task_id=self.request.id or f"inline-{time.time_ns()}", defaults={"year": year}
    )
    report.csv.save(f"annual-report-{year}.csv", ContentFile(buffer.getvalue().encode()))
    return {"report_id": report.pk, "url": report.get_absolute_url()}
