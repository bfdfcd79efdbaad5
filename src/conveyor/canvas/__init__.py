"""The canvas: signatures and the workflows built from them (chain, group, chord, chunks,
map/starmap), and what a worker does after a task finished (``link`` / ``link_error``).

How workflows travel (everything is JSON inside messages or small values in the result store):

* Applying a workflow first *freezes* it: every task gets its id (and every group its id), so
  the handle returned (``AsyncResult`` / ``GroupResult``) is known at once and every message
  that later sends a follow-up sends the same ids again.
* ``chain(a, b, c)``: ``a`` is sent with the rest of the chain as a ``link``; when ``a``
  succeeds the worker sends ``b`` with ``a``'s result prepended, and so on.
* ``group``: the members are sent with one bulk publish (``app.send_many``).
* ``chord(header, body)``: a chord record (header result ids, body) is stored, then the header
  is sent; each header task carries ``{"id", "size"}``. Once its result is stored, it joins an
  idempotent set keyed by the chord id; whoever sees the set full sends the body, guarded by a
  short claim and a "sent" marker. Tasks sent by follow-ups carry a run-once header so the
  worker skips duplicates (see :func:`once_guard`).

Modules: :mod:`.signature` (Signature, its JSON form), :mod:`.workflows` (chain, group,
chord), :mod:`.mapping` (xmap, xstarmap, chunks), :mod:`.plan` (what applying sends),
:mod:`.followups` (after a task finished), :mod:`.chords` (a chord's stored state),
:mod:`.once` (the run-once guard), :mod:`.builtin_tasks` (``conveyor.map`` / ``starmap``).
"""

from .builtin_tasks import register_builtin_tasks
from .followups import followup_id, on_task_finished
from .mapping import chunks, xmap, xstarmap
from .once import ONCE_HEADER, once_guard
from .signature import Signature, as_signature, signature
from .workflows import chain, chord, group

__all__ = [
    "ONCE_HEADER",
    "Signature",
    "as_signature",
    "chain",
    "chord",
    "chunks",
    "followup_id",
    "group",
    "on_task_finished",
    "once_guard",
    "register_builtin_tasks",
    "signature",
    "xmap",
    "xstarmap",
]
