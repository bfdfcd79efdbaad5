import re

import pytest
from django.core import mail
from django.urls import reverse

from accounts.models import User
from accounts.tasks import send_verification_email

SIGNUP = {
    "email": "grace@example.com",
    "full_name": "Grace Hopper",
    "password1": "a-long-passphrase-42",
    "password2": "a-long-passphrase-42",
}


def verification_link(message: mail.EmailMessage) -> str:
    match = re.search(r"https?://\S+/accounts/verify/[0-9a-f-]+/", str(message.body))
    assert match, message.body
    return match.group(0)


@pytest.mark.django_db
def test_signup_queues_the_verification_email_only_after_commit(
    client, django_capture_on_commit_callbacks, conveyor_app
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("accounts:signup"), SIGNUP)
        assert response.status_code == 302
        assert conveyor_app.broker.stats(["default"])["default"].ready == 0  # not yet
    assert len(callbacks) == 1
    callbacks[0]()  # the commit happens
    assert conveyor_app.broker.stats(["default"])["default"].ready == 1
    user = User.objects.get(email="grace@example.com")
    assert not user.is_verified
    assert response.url == reverse("accounts:check_email")


@pytest.mark.django_db(transaction=True)
def test_signup_verification_email_and_link(client, worker):
    response = client.post(reverse("accounts:signup"), SIGNUP, follow=True)
    assert b"Check your email" in response.content
    worker.run_until_idle()
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["grace@example.com"]
    assert message.subject == "Verify your QuickPublisher account"
    link = verification_link(message)
    user = User.objects.get(email="grace@example.com")
    assert link.endswith(f"/accounts/verify/{user.verification_uuid}/")

    path = link.split("://", 1)[1].split("/", 1)[1]
    first = client.get("/" + path)
    assert first.status_code == 200
    assert b"Thanks for confirming" in first.content
    user.refresh_from_db()
    assert user.is_verified

    second = client.get("/" + path)  # a second click is harmless
    assert second.status_code == 200
    assert b"already used" in second.content
    user.refresh_from_db()
    assert user.is_verified


@pytest.mark.django_db
def test_unknown_verification_link_is_404(client):
    response = client.get(
        reverse("accounts:verify", args=["0" * 8 + "-0000-0000-0000-" + "0" * 12])
    )
    assert response.status_code == 404


@pytest.mark.django_db
def test_verification_task_is_idempotent(make_user):
    user = make_user("late@example.com", verified=False)
    mail.outbox.clear()
    User.objects.filter(pk=user.pk).update(is_verified=True)
    assert send_verification_email(user.pk) == "skipped"  # verified meanwhile: nothing sent
    assert send_verification_email(999_999) == "skipped"  # deleted meanwhile
    assert mail.outbox == []


@pytest.mark.django_db
def test_signup_rejects_a_taken_email_in_any_case(client, make_user):
    make_user("grace@example.com")
    response = client.post(reverse("accounts:signup"), {**SIGNUP, "email": "Grace@Example.com"})
    assert response.status_code == 200
    assert b"already exists" in response.content


@pytest.mark.django_db
def test_login_with_email_and_logout(client, author, password):
    response = client.post(
        reverse("accounts:login"), {"username": author.email, "password": password}
    )
    assert response.status_code == 302
    assert client.get(reverse("home")).context["user"] == author
    client.post(reverse("accounts:logout"))
    assert not client.get(reverse("home")).context["user"].is_authenticated


@pytest.mark.django_db
def test_unverified_users_cannot_write(client, make_user):
    user = make_user("new@example.com", verified=False)
    client.force_login(user)
    response = client.get(reverse("publisher:create"))
    assert response.status_code == 302
    assert response.url == reverse("accounts:check_email")
