"""Workers: the in-process :class:`Worker`, worker processes and their supervisor."""

from .worker import Worker

__all__ = ["Worker"]
