"""A stand-in for ``conveyor.contrib.django`` until that app is released. DELETE when it is.

It does the two things the site needs from the integration: send ``delay_on_commit()`` tasks
when the transaction commits, and ``manage.py conveyor_worker [-B]`` (an in-process worker,
plus a minimal single-process beat). settings/base.py installs it only when
``conveyor.contrib.django`` cannot be imported.
"""
