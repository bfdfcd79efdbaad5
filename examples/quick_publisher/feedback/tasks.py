"""Feedback emails: a thank-you to the sender and a notice to the staff, each its own task."""

from conveyor import shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.utils import timezone

from quick_publisher.mail import MAIL_ERRORS

from .models import Feedback


@shared_task(autoretry_for=MAIL_ERRORS, retry_backoff=True, retry_jitter=True, max_retries=8)
def send_thank_you_email(feedback_id: int) -> str:
    feedback = Feedback.objects.filter(pk=feedback_id, thanked_at__isnull=True).first()
    if feedback is None:
        return "skipped"  # already thanked (a redelivery) or deleted
    send_mail(
        subject="Thank you for your feedback!",
        message=(
            f"Hello {feedback.name},\n\n"
            f"Thank you for writing to {settings.SITE_NAME}. We read every message and will "
            f"reply if needed.\n\nYou wrote:\n\n{feedback.message}\n"
        ),
        from_email=None,
        recipient_list=[feedback.email],
    )
    Feedback.objects.filter(pk=feedback_id).update(thanked_at=timezone.now())
    return "sent"


@shared_task(autoretry_for=MAIL_ERRORS, retry_backoff=True, retry_jitter=True, max_retries=8)
def notify_staff_of_feedback(feedback_id: int) -> str:
    feedback = Feedback.objects.filter(pk=feedback_id, staff_notified_at__isnull=True).first()
    if feedback is None:
        return "skipped"
    staff = list(
        get_user_model()
        .objects.filter(is_staff=True, is_active=True)
        .values_list("email", flat=True)
    )
    if staff:
        send_mail(
            subject=f"New feedback from {feedback.name}",
            message=(
                f"From: {feedback.name} <{feedback.email}>\n"
                f"Received: {timezone.localtime(feedback.created):%Y-%m-%d %H:%M}\n\n"
                f"{feedback.message}\n"
            ),
            from_email=None,
            recipient_list=staff,
        )
    Feedback.objects.filter(pk=feedback_id).update(staff_notified_at=timezone.now())
    return "sent" if staff else "no staff"
