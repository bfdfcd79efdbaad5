"""Workers: the in-process :class:`Worker`, worker processes and their supervisor."""

from .worker import Worker, WorkerOptions

__all__ = ["Worker", "WorkerOptions"]
