import pytest
from django.urls import reverse


@pytest.mark.django_db
@pytest.mark.parametrize(
    "name",
    [
        "admin:accounts_user_changelist",
        "admin:accounts_user_add",
        "admin:publisher_post_changelist",
        "admin:feedback_feedback_changelist",
        "admin:reports_annualreport_changelist",
        "admin:newsletters_newsletter_changelist",
        "admin:outbox_outboxmessage_changelist",
    ],
)
def test_admin_pages_render(admin_client, name):
    assert admin_client.get(reverse(name)).status_code == 200


@pytest.mark.django_db
def test_admin_creates_users_with_email_and_password(admin_client):
    from accounts.models import User

    response = admin_client.post(
        reverse("admin:accounts_user_add"),
        {
            "email": "new@example.com",
            "full_name": "New Person",
            "password1": "a-long-passphrase-42",
            "password2": "a-long-passphrase-42",
        },
    )
    assert response.status_code == 302
    user = User.objects.get(email="new@example.com")
    assert user.check_password("a-long-passphrase-42")
    assert (
        admin_client.get(reverse("admin:accounts_user_change", args=[user.pk])).status_code == 200
    )


@pytest.mark.django_db
def test_admin_index_spells_every_model_plural_in_english(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert "Deliveries" in page and "Report deliveries" in page
    assert "ys<" not in page  # Django's default plural, "Deliverys"


def test_demo_sends_the_report_at_most_every_ten_minutes():
    from datetime import UTC, datetime
    from itertools import pairwise

    from quick_publisher.settings import demo

    schedule = demo.CONVEYOR_BEAT_SCHEDULE["send-view-count-report"]["schedule"]
    runs, when = [], datetime(2024, 5, 1, tzinfo=UTC)
    while len(runs) < 12:
        when = schedule.next_after(when)
        runs.append(when)
    assert min((b - a).total_seconds() for a, b in pairwise(runs)) >= 600


def test_the_conveyor_dashboard_is_served_to_staff(admin_client, client):
    for path in ("/conveyor/", "/conveyor/queues", "/conveyor/workers", "/conveyor/dead"):
        page = admin_client.get(path)
        assert page.status_code == 200, path
        assert "script-src 'self'" in page["Content-Security-Policy"]
    assert client.get("/conveyor/").status_code == 302  # anonymous: to the login page
