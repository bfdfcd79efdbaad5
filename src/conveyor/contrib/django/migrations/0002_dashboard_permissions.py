# mypy: ignore-errors
"""Permissions of the dashboard (conveyor.contrib.django.dashboard)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("conveyor", "0001_initial")]

    operations = [
        migrations.AlterModelOptions(
            name="taskresult",
            options={
                "ordering": ["-updated_at", "-id"],
                "permissions": [
                    ("view_dashboard", "Can see the Conveyor dashboard"),
                    ("operate_dashboard", "Can take actions in the Conveyor dashboard"),
                ],
                "verbose_name": "task result",
                "verbose_name_plural": "task results",
            },
        ),
    ]
