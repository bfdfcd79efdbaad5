import pytest
from django.core import mail
from django.urls import reverse

from feedback.models import Feedback
from feedback.tasks import notify_staff_of_feedback, send_thank_you_email

FORM = {"name": "Linus", "email": "linus@example.com", "message": "Lovely site, more posts!"}


@pytest.mark.django_db(transaction=True)
def test_feedback_is_saved_and_answered_in_the_background(client, worker, staff, conveyor_app):
    response = client.post(reverse("feedback:form"), FORM)
    assert response.status_code == 302
    assert response.url == reverse("feedback:thanks")
    feedback = Feedback.objects.get()
    assert feedback.message == FORM["message"]
    assert mail.outbox == []  # the response did not wait for any mail
    assert conveyor_app.broker.stats(["default"])["default"].ready == 2  # two tasks queued

    worker.run_until_idle()
    sent = {message.subject: message for message in mail.outbox}
    assert sent["Thank you for your feedback!"].to == ["linus@example.com"]
    assert sent["New feedback from Linus"].to == [staff.email]
    assert FORM["message"] in str(sent["New feedback from Linus"].body)
    feedback.refresh_from_db()
    assert feedback.thanked_at is not None and feedback.staff_notified_at is not None


@pytest.mark.django_db
def test_a_mail_server_outage_does_not_break_the_form(client, settings):
    settings.MAILERS = {
        "default": {"BACKEND": "outbox.backends.FlakyOutboxBackend", "OPTIONS": {"failures": 99}}
    }
    response = client.post(reverse("feedback:form"), FORM)
    assert response.status_code == 302
    assert Feedback.objects.count() == 1


@pytest.mark.django_db
def test_feedback_tasks_are_idempotent(staff):
    feedback = Feedback.objects.create(**FORM)
    assert send_thank_you_email(feedback.pk) == "sent"
    assert send_thank_you_email(feedback.pk) == "skipped"
    assert notify_staff_of_feedback(feedback.pk) == "sent"
    assert notify_staff_of_feedback(feedback.pk) == "skipped"
    assert len(mail.outbox) == 2


@pytest.mark.django_db
def test_invalid_feedback_is_shown_again(client):
    response = client.post(reverse("feedback:form"), {**FORM, "email": "nope"})
    assert response.status_code == 200
    assert "email" in response.context["form"].errors
    assert not Feedback.objects.exists()
