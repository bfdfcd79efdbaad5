"""``manage.py load_demo_data``: a staff user, two verified authors and a few posts.

Safe to run again: accounts and posts are matched by email and slug, and passwords reset to
the ones printed.
"""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from publisher.models import Post

PASSWORD = "demo1234"
USERS = [
    # email, full name, staff
    ("staff@quickpublisher.dev", "Sam Staff", True),
    ("alice@example.com", "Alice Author", False),
    ("bob@example.com", "Bob Blogger", False),
]
POSTS = [
    (
        "alice@example.com",
        "Why background tasks matter",
        "why-background-tasks-matter",
        "A web request should answer quickly. Sending an email, resizing an image or adding "
        "up a year of numbers can take seconds, and the mail server may be down. Work like "
        "that belongs in a task queue. The request saves what it must, queues a task with "
        "the ids it needs, and answers at once. A worker picks the task up, runs it, and "
        "retries it with exponential backoff when something outside fails. Tasks should be "
        "small and idempotent, so that running one twice does no harm.",
    ),
    (
        "alice@example.com",
        "Passing ids, not objects",
        "passing-ids-not-objects",
        "A task runs later, maybe much later, in another process. If you pass it a model "
        "object, it works on a stale copy. Pass the primary key instead and let the task "
        "load fresh data. Ids are also small and JSON-friendly, which keeps messages cheap. "
        "Conveyor refuses arguments that are not JSON, so the mistake shows up at once.",
    ),
    (
        "bob@example.com",
        "A daily report at half past seven",
        "a-daily-report-at-half-past-seven",
        "Every morning each author gets an email with a table of their posts and how often "
        "each was viewed. The beat scheduler sends one task at 07:30 in the site's time "
        "zone; that task queues one small task per author, and each of those can fail and "
        "retry without holding up the others.",
    ),
]


class Command(BaseCommand):
    help = "Create the demo accounts and posts (idempotent) and print how to log in."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        users = {}
        for email, full_name, staff in USERS:
            user, _ = User.objects.get_or_create(
                email=email,
                defaults={"full_name": full_name, "is_verified": True},
            )
            user.full_name = full_name
            user.is_verified = True
            user.is_staff = user.is_superuser = staff
            user.set_password(PASSWORD)
            user.save()
            users[email] = user
        for email, title, slug, content in POSTS:
            Post.objects.get_or_create(
                slug=slug, defaults={"author": users[email], "title": title, "content": content}
            )
        self.stdout.write(self.style.SUCCESS("Demo data loaded. Log in with:"))
        for email, _, staff in USERS:
            role = "staff: reports, newsletters, admin" if staff else "author"
            self.stdout.write(f"  {email:<28} password: {PASSWORD}   ({role})")
