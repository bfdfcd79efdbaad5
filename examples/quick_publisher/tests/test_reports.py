"""The periodic view-count report: the beat entry, the fan-out, retries when mail fails."""

from datetime import datetime
from smtplib import SMTPException
from zoneinfo import ZoneInfo

import pytest
from conveyor import TaskFailed
from conveyor.schedules import crontab
from django.core import mail

from outbox.backends import FlakyOutboxBackend
from outbox.models import OutboxMessage
from publisher.models import Post, ReportDelivery
from publisher.tasks import send_author_report, send_view_count_report
from quick_publisher.settings import base as base_settings

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_report_is_scheduled_daily_at_half_past_seven_in_the_site_time_zone(conveyor_app):
    entry = base_settings.CONVEYOR_BEAT_SCHEDULE["send-view-count-report"]
    assert entry["task"] == send_view_count_report.name
    assert entry["schedule"] == crontab(hour=7, minute=30)
    assert base_settings.CONVEYOR_TIMEZONE == base_settings.TIME_ZONE == "Asia/Shanghai"
    after = datetime(2025, 3, 1, 8, 0, tzinfo=SHANGHAI)
    assert entry["schedule"].next_after(after) == datetime(2025, 3, 2, 7, 30, tzinfo=SHANGHAI)
    # The app the worker and beat use has the same time zone and a schedule for the report.
    assert conveyor_app.conf.timezone == "Asia/Shanghai"
    assert "send-view-count-report" in conveyor_app.conf.beat_schedule


@pytest.mark.django_db(transaction=True)
def test_every_author_gets_a_table_of_their_posts(worker, make_user):
    ada = make_user("ada@example.com", full_name="Ada Lovelace")
    bob = make_user("bob@example.com", full_name="Bob Blogger")
    make_user("reader@example.com")  # no posts: no report
    Post.objects.create(author=ada, title="Engines", slug="engines", content="x", view_count=7)
    Post.objects.create(author=ada, title="Notes", slug="notes", content="x", view_count=3)
    Post.objects.create(author=bob, title="Blogging", slug="blogging", content="x")
    worker.run_until_idle()
    mail.outbox.clear()

    assert send_view_count_report.delay().get(timeout=10) == 2
    worker.run_until_idle()

    reports = {m.to[0]: m for m in mail.outbox}
    assert set(reports) == {"ada@example.com", "bob@example.com"}
    body = str(reports["ada@example.com"].body)
    assert "7  Engines" in body and "3  Notes" in body and "10  views in total" in body
    html = reports["ada@example.com"].alternatives[0].content
    assert "<table" in str(html) and "Engines" in str(html)
    assert ReportDelivery.objects.count() == 2


@pytest.mark.django_db
def test_a_report_goes_out_once_per_period(author):
    Post.objects.create(author=author, title="T", slug="t", content="x")
    assert send_author_report(author.pk, "2025-03-02 07:30") == "sent"
    assert send_author_report(author.pk, "2025-03-02 07:30") == "already sent"  # redelivered
    assert send_author_report(author.pk, "2025-03-03 07:30") == "sent"
    assert len(mail.outbox) == 2


def test_mail_tasks_retry_with_exponential_backoff_and_jitter():
    assert issubclass(SMTPException, send_author_report.autoretry_for)
    assert send_author_report.retry_backoff is True
    assert send_author_report.retry_jitter is True
    for retries in range(12):
        ceiling = min(2**retries, send_author_report.retry_backoff_max)
        assert 0 <= send_author_report.retry_delay(retries) <= ceiling


@pytest.mark.django_db(transaction=True)
def test_report_is_retried_until_the_mail_server_accepts_it(worker, author, settings, monkeypatch):
    settings.MAILERS = {
        "default": {"BACKEND": "outbox.backends.FlakyOutboxBackend", "OPTIONS": {"failures": 2}}
    }
    monkeypatch.setattr(FlakyOutboxBackend, "failed", 0)
    monkeypatch.setattr(send_author_report, "retry_backoff", 0.05)  # seconds, not 1 s
    Post.objects.create(author=author, title="T", slug="t", content="x")
    worker.run_until_idle()

    result = send_author_report.delay(author.pk, "2025-03-02 07:30")
    assert result.get(timeout=20) == "sent"
    assert result.retries == 2  # two refusals, then delivered
    assert FlakyOutboxBackend.failed == 2
    message = OutboxMessage.objects.get()
    assert message.recipients == [author.email]
    assert ReportDelivery.objects.filter(author=author).count() == 1


@pytest.mark.django_db(transaction=True)
def test_report_fails_for_good_after_max_retries(worker, author, settings, monkeypatch):
    settings.MAILERS = {
        "default": {"BACKEND": "outbox.backends.FlakyOutboxBackend", "OPTIONS": {"failures": 99}}
    }
    monkeypatch.setattr(FlakyOutboxBackend, "failed", 0)
    monkeypatch.setattr(send_author_report, "retry_backoff", 0.01)
    monkeypatch.setattr(send_author_report, "max_retries", 2)
    Post.objects.create(author=author, title="T", slug="t", content="x")
    worker.run_until_idle()

    result = send_author_report.delay(author.pk, "2025-03-02 07:30")
    # Exceptions come back as TaskFailed unless the task declares them (``throws=``): Conveyor
    # never imports classes named in result data.
    with pytest.raises(TaskFailed, match="SMTPServerDisconnected"):
        result.get(timeout=20)
    assert result.state == "FAILURE"
    assert FlakyOutboxBackend.failed == 3  # the first try and two retries
    assert not ReportDelivery.objects.exists()
    with pytest.raises(SMTPException):
        worker.raise_failures()  # the in-process worker saw the original exception


@pytest.mark.django_db(transaction=True)
def test_the_period_is_the_run_that_beat_scheduled(worker, author):
    Post.objects.create(author=author, title="T", slug="t", content="x")
    headers = {"periodic_entry": "send-view-count-report", "scheduled_at": "2025-03-01T23:30:00Z"}
    for _ in range(2):  # the same run delivered twice: one email
        send_view_count_report.apply_async(headers=headers)
        worker.run_until_idle()
    (delivery,) = ReportDelivery.objects.all()
    assert delivery.period == "2025-03-02 07:30:00"  # 07:30 in Shanghai
    reports = [m for m in mail.outbox if m.subject.startswith("Your QuickPublisher activity")]
    assert len(reports) == 1
