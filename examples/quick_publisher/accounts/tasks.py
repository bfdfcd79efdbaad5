"""Account tasks: small, idempotent, given ids."""

import logging

from conveyor import shared_task
from django.conf import settings
from django.core.mail import send_mail

from quick_publisher.mail import MAIL_ERRORS

from .models import User

logger = logging.getLogger(__name__)


@shared_task(
    autoretry_for=MAIL_ERRORS,
    retry_backoff=True,
    retry_jitter=True,
    max_retries=8,
)
def send_verification_email(user_id: int) -> str:
    """Email the verification link to a user who has not verified yet.

    Idempotent: an account that is verified (or gone) by the time this runs gets nothing.
    """
    user = User.objects.filter(pk=user_id, is_verified=False).first()
    if user is None:
        logger.info("user %s is verified or gone: no verification email", user_id)
        return "skipped"
    link = settings.SITE_URL + user.get_verification_url()
    send_mail(
        subject=f"Verify your {settings.SITE_NAME} account",
        message=(
            f"Hello {user.get_short_name()},\n\n"
            f"Follow this link to verify your account:\n{link}\n\n"
            f"If you did not sign up, ignore this message.\n"
        ),
        from_email=None,
        recipient_list=[user.email],
    )
    return "sent"
