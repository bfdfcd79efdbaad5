"""An email backend that stores messages in the database (the demo's outbox, at /outbox/).

Select it with ``EMAIL_BACKEND = "outbox.backends.OutboxEmailBackend"``. Production settings
use Django's SMTP backend instead; the tasks that send mail do not change.
"""

import threading
from collections.abc import Sequence
from smtplib import SMTPServerDisconnected
from typing import Any

from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.core.mail.backends.base import BaseEmailBackend

from .models import OutboxMessage

_lock = threading.Lock()


class OutboxEmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        rows = []
        for message in email_messages:
            recipients = message.recipients()
            if not recipients:
                continue
            html = ""
            if isinstance(message, EmailMultiAlternatives):
                html = next(
                    (str(a.content) for a in message.alternatives if a.mimetype == "text/html"), ""
                )
            rows.append(
                OutboxMessage(
                    subject=message.subject,
                    from_email=message.from_email,
                    to="\n".join(recipients),
                    body=str(message.body),
                    html_body=html,
                )
            )
        OutboxMessage.objects.bulk_create(rows)
        return len(rows)


class FlakyOutboxBackend(OutboxEmailBackend):
    """The outbox behind a mail server that fails: the first ``failures`` sends in this
    process raise ``SMTPServerDisconnected``, later ones are stored. To see retries::

        MAILERS = {"default": {"BACKEND": "outbox.backends.FlakyOutboxBackend",
                               "OPTIONS": {"failures": 3}}}
    """

    failed = 0  # sends refused so far, in this process

    def __init__(self, *, failures: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures = failures

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        with _lock:
            if FlakyOutboxBackend.failed < self.failures:
                FlakyOutboxBackend.failed += 1
                raise SMTPServerDisconnected("the mail server hung up (FlakyOutboxBackend)")
        return super().send_messages(email_messages)
