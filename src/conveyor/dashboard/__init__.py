"""The web dashboard (``conveyor[dashboard]``): queues, workers, dead letters, tasks and an
audit log of every action, served by ``conveyor dashboard`` or mounted in an ASGI app."""

from .app import create_dashboard
from .security import DashboardAuth

__all__ = ["DashboardAuth", "create_dashboard"]
