"""Send the verification email when an account is created.

The task gets the user's id, never the object, and a worker must never see it before the
transaction that created the user commits (it would not find the row yet). ``delay()`` inside
the sign-up's ``transaction.atomic()`` gives that on every broker: on PostgreSQL in the site's
own database the task is written in that very transaction (transactional enqueue: it commits
or rolls back with the account); on SQLite or Redis ``CONVEYOR_TASK_ENQUEUE_ON_COMMIT`` makes
it wait for the commit.
"""

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from .models import User
from .tasks import send_verification_email


@receiver(post_save, sender=User, dispatch_uid="accounts.send_verification_email")
def user_created(sender: type[User], instance: User, created: bool, **kwargs: Any) -> None:
    if created and not instance.is_verified and not kwargs.get("raw"):
        send_verification_email.delay(instance.pk)
