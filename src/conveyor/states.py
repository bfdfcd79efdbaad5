"""Task state names.

PENDING means "unknown id": Conveyor never stored anything for it. QUEUED is written when the
broker accepted the message, so a task that was sent is never confused with one that was not.
"""

from typing import Final

PENDING: Final = "PENDING"
QUEUED: Final = "QUEUED"
STARTED: Final = "STARTED"
RETRY: Final = "RETRY"
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
REVOKED: Final = "REVOKED"
EXPIRED: Final = "EXPIRED"

#: States after which nothing more will happen to a task.
READY_STATES: Final = frozenset({SUCCESS, FAILURE, REVOKED, EXPIRED})
#: Ready states that are not a success.
EXCEPTION_STATES: Final = frozenset({FAILURE, REVOKED, EXPIRED})
UNREADY_STATES: Final = frozenset({PENDING, QUEUED, STARTED, RETRY})
ALL_STATES: Final = READY_STATES | UNREADY_STATES
