import pytest
from django.core import mail
from django.urls import reverse

from newsletters.models import Delivery, Newsletter
from newsletters.tasks import send_newsletter_chunk
from publisher.models import Post


@pytest.mark.django_db(transaction=True)
def test_newsletter_goes_to_every_verified_user_in_chunks(client, staff, make_user, worker):
    readers = [make_user(f"reader{i}@example.com") for i in range(4)]
    make_user("unverified@example.com", verified=False)
    post = Post.objects.create(author=readers[0], title="Big news", slug="big-news", content="x")
    worker.run_until_idle()
    mail.outbox.clear()

    client.force_login(staff)
    response = client.post(reverse("newsletters:send", args=[post.slug]))
    assert response.url == reverse("newsletters:index")
    worker.run_until_idle()

    newsletter = Newsletter.objects.get()
    assert newsletter.recipients == 5  # four readers and the staff member, all verified
    assert newsletter.sent == 5
    assert newsletter.finished is not None
    issues = [m for m in mail.outbox if m.subject == "QuickPublisher: Big news"]
    assert sorted(m.to[0] for m in issues) == sorted(
        [staff.email, *(reader.email for reader in readers)]
    )
    assert "unverified@example.com" not in {m.to[0] for m in mail.outbox}
    assert "/posts/big-news/" in str(issues[0].body)
    # The chord's callback ran once, after every chunk (NEWSLETTER_CHUNK_SIZE = 2: 3 chunks).
    (summary,) = [m for m in mail.outbox if m.subject.startswith("Newsletter sent")]
    assert summary.to == [staff.email]
    assert "went to 5 of 5 verified users in 3 chunk(s)" in str(summary.body)
    assert b"done" in client.get(reverse("newsletters:index")).content


@pytest.mark.django_db
def test_a_chunk_that_runs_again_sends_nothing_twice(staff, make_user):
    reader = make_user("reader@example.com")
    post = Post.objects.create(author=staff, title="News", slug="news", content="x")
    newsletter = Newsletter.objects.create(post=post, created_by=staff)
    assert send_newsletter_chunk(newsletter.pk, [reader.pk, staff.pk]) == 2
    assert send_newsletter_chunk(newsletter.pk, [reader.pk, staff.pk]) == 2  # redelivered
    assert len(mail.outbox) == 2
    assert Delivery.objects.count() == 2


@pytest.mark.django_db
def test_only_staff_send_newsletters(client, author):
    post = Post.objects.create(author=author, title="News", slug="news", content="x")
    client.force_login(author)
    response = client.post(reverse("newsletters:send", args=[post.slug]))
    assert response.status_code == 302 and "/admin/login/" in response.url
    assert not Newsletter.objects.exists()
