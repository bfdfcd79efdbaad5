"""Interim stand-ins for parts of Conveyor still being built. DELETE each when it lands.

* ``manage.py conveyor_worker [-B]`` - an in-process worker (conveyor.contrib.django's
  ``DjangoWorker``) plus a minimal single-process beat, until the contrib app ships its
  management commands (it is listed before this app in INSTALLED_APPS, so its command wins).
"""
