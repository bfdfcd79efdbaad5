from django.apps import AppConfig


class PublisherConfig(AppConfig):
    name = "publisher"
    verbose_name = "Posts"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects the post_save receiver)
