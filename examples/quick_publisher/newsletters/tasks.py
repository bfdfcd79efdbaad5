"""Sending a post to every verified user: a chord of small chunk tasks and a summary.

    send_newsletter(newsletter_id)
      └─ chord( group(send_newsletter_chunk(newsletter_id, [ids...]) for each chunk),
                newsletter_summary(newsletter_id) )

Each chunk is a small task that can fail and retry on its own; the summary runs once, when
every chunk has finished, with the list of their return values.
"""

from conveyor import chord, group, shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage, mailers
from django.utils import timezone

from quick_publisher.mail import MAIL_ERRORS

from .models import Delivery, Newsletter


@shared_task
def send_newsletter(newsletter_id: int) -> int:
    """Split the verified users into chunks and start the chord. Returns the chunk count."""
    newsletter = Newsletter.objects.get(pk=newsletter_id)
    if newsletter.started is not None:
        return 0  # a redelivery: the chunks are on their way (and skip who got it anyway)
    user_ids = list(
        get_user_model()
        .objects.filter(is_verified=True, is_active=True)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    size = settings.NEWSLETTER_CHUNK_SIZE
    chunks = [user_ids[i : i + size] for i in range(0, len(user_ids), size)]
    Newsletter.objects.filter(pk=newsletter.pk).update(recipients=len(user_ids))
    if chunks:
        header = group(send_newsletter_chunk.s(newsletter_id, chunk) for chunk in chunks)
        chord(header)(newsletter_summary.s(newsletter_id))
    else:
        newsletter_summary.delay([], newsletter_id)
    Newsletter.objects.filter(pk=newsletter.pk).update(started=timezone.now())
    return len(chunks)


@shared_task(autoretry_for=MAIL_ERRORS, retry_backoff=True, retry_jitter=True, max_retries=8)
def send_newsletter_chunk(newsletter_id: int, user_ids: list[int]) -> int:
    """Email the post to these users, skipping those who already got it. Returns how many
    got it (now or in an earlier attempt)."""
    newsletter = Newsletter.objects.select_related("post").get(pk=newsletter_id)
    post = newsletter.post
    done = set(
        Delivery.objects.filter(newsletter=newsletter, user_id__in=user_ids).values_list(
            "user_id", flat=True
        )
    )
    users = get_user_model().objects.filter(pk__in=set(user_ids) - done)
    url = settings.SITE_URL + post.get_absolute_url()
    with mailers.default as mailer:  # one connection to the mail server for the whole chunk
        for user in users:
            message = EmailMessage(
                subject=f"{settings.SITE_NAME}: {post.title}",
                body=f"{post.summary or post.content[:400]}\n\nRead it all: {url}\n",
                to=[user.email],
            )
            mailer.send_messages([message])
            Delivery.objects.create(newsletter=newsletter, user=user)
            done.add(user.pk)
    return len(done)


@shared_task
def newsletter_summary(counts: list[int], newsletter_id: int) -> int:
    """The chord's callback: record the total and tell the staff member who sent it."""
    sent = sum(counts)
    Newsletter.objects.filter(pk=newsletter_id).update(sent=sent, finished=timezone.now())
    newsletter = Newsletter.objects.select_related("post", "created_by").get(pk=newsletter_id)
    if newsletter.created_by is not None:
        EmailMessage(
            subject=f"Newsletter sent: {newsletter.post.title}",
            body=(
                f'"{newsletter.post.title}" went to {sent} of {newsletter.recipients} verified '
                f"users in {len(counts)} chunk(s).\n"
            ),
            to=[newsletter.created_by.email],
        ).send()
    return sent
