"""The apps of ``bench.redis_peers``: one module per system, each with the same two tasks on
the Redis server ``$BENCH_REDIS_URL``:

* ``count``: ``INCR bench:done`` on that server (the drain is timed by this counter, the same
  way for every system; it is also the one round trip a real task would make);
* ``echo``: returns 1 with its result stored (for ``delay().get()`` round trips).

Every system keeps its defaults (queues, acks, prefetch, serializer) except where a default
would make the comparison meaningless; each module says what it sets and why.
"""
