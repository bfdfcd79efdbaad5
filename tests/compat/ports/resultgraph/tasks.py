# Celery's examples/resultgraph/tasks.py, ported by the import swap (`celery` -> `conveyor`,
# `celery.result` -> `conveyor.result`). Two lines are ours and marked: Celery's example relies
# on the default app that `@task()` binds to; a worker needs an app to import.
# Example::
#    >>> R = A.apply_async()
#    >>> list(joinall(R))
#    [['A 0', 'A 1', 'A 2', 'A 3', 'A 4', 'A 5', 'A 6', 'A 7', 'A 8', 'A 9'],
#    ['B 0', 'B 1', 'B 2', 'B 3', 'B 4', 'B 5', 'B 6', 'B 7', 'B 8', 'B 9'],
#    ...
#    ['H 0', 'H 1', 'H 2', 'H 3', 'H 4', 'H 5', 'H 6', 'H 7', 'H 8', 'H 9']]
#
# Joining the graph asynchronously with a callback
# (Note: only two levels, the deps are considered final
#        when the second task is ready).
#
#    >>> unlock_graph.apply_async((A.apply_async(),
#    ...                           A_callback.s()), countdown=1)

from collections import deque

from conveyor import Conveyor  # ours
from conveyor import chord, group, signature, task, uuid
from conveyor.result import AsyncResult, ResultSet, allow_join_result

app = Conveyor("resultgraph")  # ours


@task()
def add(x, y):
    return x + y


@task()
def make_request(id, url):
    print(f"-get: {url!r}")
    return url


@task()
def B_callback(urls, id):
    print(f"-batch {id} done")
    return urls


@task()
def B(id):
    return chord(make_request.s(id, f"{id} {i!r}") for i in range(10))(B_callback.s(id))


@task()
def A():
    return group(B.s(c) for c in "ABCDEFGH").apply_async()


def joinall(R, timeout=None, propagate=True):
    stack = deque([R])

    try:
        use_native = joinall.backend.supports_native_join
    except AttributeError:
        use_native = False

    while stack:
        res = stack.popleft()
        if isinstance(res, ResultSet):
            j = res.join_native if use_native else res.join
            stack.extend(j(timeout=timeout, propagate=propagate))
        elif isinstance(res, AsyncResult):
            stack.append(res.get(timeout=timeout, propagate=propagate))
        else:
            yield res


@task()
def unlock_graph(result, callback, interval=1, propagate=False, max_retries=None):
    if result.ready():
        second_level_res = result.get()
        if second_level_res.ready():
            with allow_join_result():
                signature(callback).delay(list(joinall(second_level_res, propagate=propagate)))
    else:
        unlock_graph.retry(countdown=interval, max_retries=max_retries)


@task()
def A_callback(res):
    print(f"-everything done: {res!r}")
    return res


class chord2:
    def __init__(self, tasks, **options):
        self.tasks = tasks
        self.options = options

    def __call__(self, body, **options):
        body.options.setdefault("task_id", uuid())
        unlock_graph.apply_async()
