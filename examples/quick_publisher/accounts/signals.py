"""Send the verification email when an account is created.

The task gets the user's id, never the object, and is queued only once the transaction that
created the user commits: a worker that picked it up earlier would not find the row yet.
"""

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from .models import User
from .tasks import send_verification_email


@receiver(post_save, sender=User, dispatch_uid="accounts.send_verification_email")
def user_created(sender: type[User], instance: User, created: bool, **kwargs: Any) -> None:
    if created and not instance.is_verified and not kwargs.get("raw"):
        send_verification_email.delay_on_commit(instance.pk)
