"""The QuickPublisher demo in a real browser, with a real worker and beat behind it."""

from __future__ import annotations

import re
import uuid
from datetime import date
from typing import Any

from playwright.sync_api import expect

from .conftest import ALICE, STAFF

MAIL_TIMEOUT = 20_000  # ms: a task picks the message up, sends it; the outbox page reloads


def login(page: Any, email: str, password: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def open_mail(page: Any, to: str, subject: str | re.Pattern[str]) -> None:
    """Open the newest mail to ``to`` with this subject, waiting for a task to send it."""
    page.goto(f"/outbox/?to={to}")
    link = page.get_by_role("link", name=subject).first
    expect(link).to_be_visible(timeout=MAIL_TIMEOUT)  # the page reloads itself on new mail
    link.click()
    expect(page.get_by_role("heading", level=1)).to_have_text(subject)


def unique_email(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"


def test_sign_up_then_verify_from_the_outbox(page: Any, shot: Any) -> None:
    email = unique_email("grace")
    page.goto("/")
    shot(page, "home")
    page.get_by_role("link", name="Sign up").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Full name").fill("Grace Hopper")
    page.get_by_label(re.compile(r"^Password:?$")).fill("a-long-passphrase-42")
    page.get_by_label("Password confirmation").fill("a-long-passphrase-42")
    shot(page, "signup")
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    expect(page.get_by_text("unverified")).to_be_visible()
    shot(page, "check-email")

    page.get_by_role("link", name="Open the outbox").click()
    link = page.get_by_role("link", name="Verify your QuickPublisher account")
    expect(link).to_be_visible(timeout=MAIL_TIMEOUT)
    shot(page, "outbox")
    link.click()
    expect(page.get_by_text("Follow this link to verify your account")).to_be_visible()
    shot(page, "outbox-verification-email")

    page.locator("a[href*='/accounts/verify/']").click()
    expect(page.get_by_test_id("verified-heading")).to_have_text("Your account is verified")
    expect(page.get_by_test_id("verified-badge")).to_be_visible()
    shot(page, "verified")

    page.go_back()  # a second click is harmless
    page.locator("a[href*='/accounts/verify/']").click()
    expect(page.get_by_text("This link was already used")).to_be_visible()


def test_new_post_gets_a_summary_and_counts_views(page: Any, new_page: Any, shot: Any) -> None:
    login(page, *ALICE)
    page.get_by_role("link", name="Write").click()
    title = f"Conveyor in practice {uuid.uuid4().hex[:6]}"
    page.get_by_label("Title").fill(title)
    page.get_by_label("Content").fill(
        "Background tasks keep pages fast. A task queue takes slow work out of the request. "
        "Workers run the tasks and retry them when the mail server is down. "
        "Lunch was good. Small idempotent tasks that get ids are easy to retry."
    )
    shot(page, "post-form")
    page.get_by_role("button", name="Publish").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(title)
    # The summary is written by a task after the save; the page shows it when it is ready.
    summary = page.get_by_test_id("summary")
    expect(summary).to_contain_text("tasks")
    assert "Lunch" not in summary.inner_text()  # the off-topic sentence is left out
    expect(page.get_by_test_id("view-count")).to_have_text("0")  # the author's views don't count
    post_url = page.url

    visitor = new_page()
    visitor.goto(post_url)
    expect(visitor.get_by_test_id("view-count")).to_have_text("1")
    visitor.reload()
    expect(visitor.get_by_test_id("view-count")).to_have_text("2")
    shot(visitor, "post")


def test_annual_report_shows_progress_then_downloads(page: Any, shot: Any) -> None:
    login(page, *STAFF)
    page.get_by_role("link", name="Reports").click()
    year = date.today().year
    page.get_by_label("Year").fill(str(year))
    shot(page, "reports")
    page.get_by_role("button", name="Generate").click()
    expect(page).to_have_url(re.compile(r"/reports/tasks/[0-9a-f-]+/$"))
    # Live progress: the page polls the task's status and shows the percentage.
    page.wait_for_function(
        "() => { const p = +document.getElementById('percent').textContent;"
        " return p > 0 && p < 100; }"
    )
    expect(page.get_by_test_id("status")).to_contain_text("Working")
    shot(page, "report-progress")
    download_link = page.get_by_test_id("download")
    expect(download_link).to_be_visible(timeout=30_000)
    expect(page.get_by_test_id("percent")).to_have_text("100")
    expect(page.get_by_test_id("status")).to_have_text("Done")
    shot(page, "report-done")
    with page.expect_download() as download_info:
        download_link.click()
    download = download_info.value
    assert download.suggested_filename == f"quickpublisher-annual-report-{year}.csv"
    with open(download.path(), encoding="utf-8") as csv_file:
        lines = csv_file.read().splitlines()
    assert lines[0] == "month,posts published,views of those posts,new users,feedback received"
    assert lines[1].startswith(f"{year}-01,") and lines[-1].startswith("total,")


def test_a_failing_report_shows_the_error(page: Any) -> None:
    login(page, *STAFF)
    page.goto("/reports/")
    page.get_by_label("Year").fill("2999")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_test_id("error")).to_contain_text("There is no report for 2999")
    expect(page.get_by_test_id("status")).to_have_text("Failed")


def test_feedback_gets_a_thank_you_email(page: Any, shot: Any) -> None:
    email = unique_email("linus")
    page.goto("/feedback/")
    page.get_by_label("Name").fill("Linus")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Message").fill("Lovely site. More posts about queues, please!")
    shot(page, "feedback")
    page.get_by_role("button", name="Send feedback").click()
    expect(page.get_by_test_id("feedback-thanks")).to_be_visible()
    shot(page, "feedback-thanks")
    open_mail(page, email, "Thank you for your feedback!")
    expect(page.get_by_test_id("mail-body")).to_contain_text("More posts about queues")
    open_mail(page, STAFF[0], "New feedback from Linus")


def test_the_periodic_report_arrives(page: Any, shot: Any) -> None:
    # The e2e settings run the report every few seconds (daily at 07:30 in production).
    open_mail(page, ALICE[0], re.compile(r"^Your QuickPublisher activity"))
    frame = page.frame_locator("iframe.mail-html")
    expect(frame.get_by_role("cell", name="Why background tasks matter")).to_be_visible()
    shot(page, "periodic-report-email")


def test_newsletter_goes_out_in_chunks_with_a_summary(page: Any, shot: Any) -> None:
    login(page, *STAFF)
    page.goto("/posts/passing-ids-not-objects/")
    page.get_by_role("button", name="Send as newsletter").click()
    expect(page.get_by_role("heading", name="Newsletters")).to_be_visible()
    open_mail(page, STAFF[0], "Newsletter sent: Passing ids, not objects")
    expect(page.get_by_test_id("mail-body")).to_contain_text("verified users in")
    page.goto("/newsletters/")
    expect(page.get_by_text("done").first).to_be_visible()
    shot(page, "newsletters")
    open_mail(page, ALICE[0], "QuickPublisher: Passing ids, not objects")
