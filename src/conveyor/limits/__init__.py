"""Flow control across the cluster: rate limits and concurrency limits (docs/flow-control.md).

* :mod:`~conveyor.limits.rates`: ``"100/m"`` -> :class:`Rate`.
* :mod:`~conveyor.limits.store`: the :class:`LimitStore` contract (token buckets, slots)
  that brokers implement as ``broker.limits``: :mod:`.memory`, :mod:`.sqlite`,
  :mod:`.redis`, :mod:`.postgres`; :mod:`.kvstores`: beside a key/value store (RabbitMQ).
* :mod:`~conveyor.limits.options`: the task and call options, checked where given; keys
  travel in message headers.
* :mod:`~conveyor.limits.gate`: :class:`FlowGate`, the worker's admission of a leased task.

This package's ``__init__`` imports only the low-level modules: brokers import the stores.
"""

from .rates import Rate, parse_rate
from .store import Grant, LimitStore

__all__ = ["Grant", "LimitStore", "Rate", "parse_rate"]
