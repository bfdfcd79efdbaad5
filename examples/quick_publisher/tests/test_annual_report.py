import csv
import io
from datetime import datetime

import pytest
from django.urls import reverse
from django.utils import timezone

from feedback.models import Feedback
from publisher.models import Post
from reports.models import AnnualReport
from reports.tasks import COLUMNS, generate_report


def start(client, year: int) -> str:
    response = client.post(reverse("reports:index"), {"year": year})
    assert response.status_code == 302
    task_id = response.url.rstrip("/").rsplit("/", 1)[-1]
    assert response.url == reverse("reports:progress", args=[task_id])
    return task_id


def status(client, task_id: str) -> dict[str, object]:
    return client.get(reverse("reports:status", args=[task_id])).json()


@pytest.mark.django_db
def test_reports_are_for_staff_only(client, author):
    client.force_login(author)
    assert client.get(reverse("reports:index")).status_code == 302  # to the admin login
    assert client.get(reverse("reports:status", args=["x"])).status_code == 302


@pytest.mark.django_db(transaction=True)
def test_report_progress_then_download(client, staff, author, worker, monkeypatch):
    tz = timezone.get_current_timezone()
    Post.objects.create(
        author=author,
        title="March",
        slug="march",
        content="x",
        view_count=5,
        created=datetime(2024, 3, 10, tzinfo=tz),
    )
    Feedback.objects.create(name="A", email="a@example.com", message="m")
    progress: list[dict[str, object]] = []
    original = generate_report.update_state

    def spy(task_id=None, state=None, meta=None):
        progress.append({"state": state, **meta})
        original(task_id=task_id, state=state, meta=meta)

    monkeypatch.setattr(generate_report, "update_state", spy)
    client.force_login(staff)
    task_id = start(client, 2024)
    page = client.get(reverse("reports:progress", args=[task_id]))
    assert reverse("reports:status", args=[task_id]).encode() in page.content
    assert status(client, task_id) == {"state": "QUEUED", "percent": 0, "done": False}

    worker.run_until_idle()
    percents = [p["percent"] for p in progress]
    assert {p["state"] for p in progress} == {"PROGRESS"}
    assert percents == sorted(percents) and percents[0] == 0 and percents[-1] == 100
    assert len(percents) == 13  # one update per month, and one when saving

    done = status(client, task_id)
    report = AnnualReport.objects.get(task_id=task_id)
    assert done == {
        "state": "SUCCESS",
        "percent": 100,
        "done": True,
        "url": report.get_absolute_url(),
    }
    download = client.get(done["url"])
    assert download["Content-Type"] == "text/csv"
    assert "quickpublisher-annual-report-2024.csv" in download["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(b"".join(download.streaming_content).decode())))
    assert rows[0] == COLUMNS
    assert rows[3] == ["2024-03", "1", "5", "0", "0"]
    assert rows[-1][:3] == ["total", "1", "5"]
    assert len(rows) == 14
    assert b"Download CSV" in client.get(reverse("reports:index")).content


@pytest.mark.django_db
def test_status_shows_progress_meta(client, staff):
    client.force_login(staff)
    generate_report.update_state(
        task_id="t-progress", state="PROGRESS", meta={"percent": 42, "step": "June"}
    )
    assert status(client, "t-progress") == {
        "state": "PROGRESS",
        "percent": 42,
        "step": "June",
        "done": False,
    }


@pytest.mark.django_db(transaction=True)
def test_a_failed_report_shows_the_error(client, staff, worker):
    client.force_login(staff)
    task_id = start(client, 2999)
    worker.run_until_idle(propagate=False)
    body = status(client, task_id)
    assert body["state"] == "FAILURE" and body["done"] is True
    assert "There is no report for 2999" in body["error"]
    assert not AnnualReport.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_one_build_per_year_at_a_time(client, staff, worker):
    client.force_login(staff)
    first = start(client, 2023)
    response = client.post(reverse("reports:index"), {"year": 2023}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("reports:progress", args=[first])
    assert b"already being built" in response.content
    other_year = start(client, 2022)
    assert other_year != first
    worker.run_until_idle()
    assert status(client, first)["state"] == "SUCCESS"
    assert start(client, 2023) != first  # the build ended: a new one starts
    worker.run_until_idle()
