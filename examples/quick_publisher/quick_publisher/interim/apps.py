from django.apps import AppConfig
from django.db import connection, transaction


class InterimConfig(AppConfig):
    name = "quick_publisher.interim"
    label = "conveyor_interim"
    verbose_name = "Conveyor (interim Django integration)"

    def ready(self) -> None:
        from quick_publisher.conveyor import app

        app.commit_hook = transaction.on_commit
        app.in_transaction = lambda: connection.in_atomic_block
