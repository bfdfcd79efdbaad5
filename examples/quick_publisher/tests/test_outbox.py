import pytest
from django.core.mail import EmailMultiAlternatives, send_mail
from django.urls import reverse

from outbox.models import OutboxMessage

OUTBOX = {"default": {"BACKEND": "outbox.backends.OutboxEmailBackend"}}


@pytest.mark.django_db
def test_outbox_backend_stores_messages_and_lists_them(client, settings):
    settings.MAILERS = OUTBOX
    send_mail(
        subject="Hello",
        message="Visit http://127.0.0.1:8000/accounts/verify/x/",
        from_email=None,
        recipient_list=["a@example.com", "b@example.com"],
    )
    message = EmailMultiAlternatives("Rich", "plain", to=["c@example.com"])
    message.attach_alternative("<p>rich</p>", "text/html")
    message.send()
    hello = OutboxMessage.objects.get(subject="Hello")
    assert hello.recipients == ["a@example.com", "b@example.com"]
    assert OutboxMessage.objects.get(subject="Rich").html_body == "<p>rich</p>"

    listing = client.get(reverse("outbox:list"))
    assert b"Hello" in listing.content and b"Rich" in listing.content
    only_c = client.get(reverse("outbox:list"), {"to": "c@example.com"})
    assert b"Rich" in only_c.content and b"Hello" not in only_c.content
    detail = client.get(reverse("outbox:detail", args=[hello.pk]))
    assert b'<a href="http://127.0.0.1:8000/accounts/verify/x/"' in detail.content


@pytest.mark.django_db
def test_outbox_pages_exist_only_in_the_demo(client, settings):
    settings.OUTBOX_ENABLED = False
    assert client.get(reverse("outbox:list")).status_code == 404


@pytest.mark.django_db
def test_demo_data_is_idempotent(capsys):
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from publisher.models import Post

    call_command("load_demo_data")
    call_command("load_demo_data")
    user_model = get_user_model()
    assert user_model.objects.count() == 3
    assert user_model.objects.filter(is_staff=True, is_verified=True).count() == 1
    assert Post.objects.count() == 3
    staff = user_model.objects.get(is_staff=True)
    assert staff.check_password("demo1234")
    assert "staff@quickpublisher.dev" in capsys.readouterr().out
