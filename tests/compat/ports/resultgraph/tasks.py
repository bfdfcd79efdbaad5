# Celery's examples/resultgraph/tasks.py, ported in part: its module-level `@task()` and the
# result helpers (`from celery import task, uuid`, `from celery.result import ResultSet,
# allow_join_result`) and tasks returning results (B, A, unlock_graph, chord2) are
# LEFT OUT: they need the runtime items of issue 12 (see the report). The app line is ours:
# Celery's example relies on a default app that `@task()` creates.
from conveyor import Conveyor, chord

app = Conveyor("resultgraph")


@app.task()
def add(x, y):
    return x + y


@app.task()
def make_request(id, url):
    print(f"-get: {url!r}")
    return url


@app.task()
def B_callback(urls, id):
    print(f"-batch {id} done")
    return urls


def B(id):  # a task in Celery's example; here called in the producer
    return chord(make_request.s(id, f"{id} {i!r}") for i in range(10))(B_callback.s(id))
