from django.apps import AppConfig


class InterimConfig(AppConfig):
    name = "quick_publisher.interim"
    label = "conveyor_interim"
    verbose_name = "Conveyor (interim stand-ins)"
