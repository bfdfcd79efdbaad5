"""Task ids: random (version 4) UUIDs as strings, drawn in batches (``conveyor.uuid()``,
Celery's ``uuid()``)."""

from __future__ import annotations

import os

# Task ids come from one urandom read per ``_ID_BATCH`` ids (a syscall per id costs more than
# the rest of the id). A forked child drops what its parent drew, so no two processes share an
# id; ``list.pop`` is atomic, so threads never share one either.
_ID_BATCH = 256
_id_pool: list[str] = []
# Byte 6 of a version 4 UUID starts with the version (4), byte 8 with the variant (10).
_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT_10 = bytes((b & 0x3F) | 0x80 for b in range(256))


def new_ids(count: int) -> list[str]:
    """``count`` new random (version 4) UUIDs as strings, from one urandom read (the version
    and variant bits of all of them set by two translations, the hex made in one call)."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT_10)
    h = raw.hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-{h[i + 12 : i + 16]}-{h[i + 16 : i + 20]}-"
        f"{h[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def new_id() -> str:
    """A new task id (a random UUID as a string): ``conveyor.uuid()``, Celery's ``uuid()``."""
    try:
        return _id_pool.pop()
    except IndexError:
        _id_pool.extend(new_ids(_ID_BATCH))
        return _id_pool.pop()


os.register_at_fork(after_in_child=_id_pool.clear)
