"""Conveyor: a distributed task queue for Python and Django."""
