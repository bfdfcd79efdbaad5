"""The dashboard's pages, actions and security, through HTTP (Starlette's test client) on a
SQLite broker. The browser tests are in tests/e2e/test_dashboard.py."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conveyor import Conveyor
from conveyor.brokers.base import Message
from conveyor.dashboard import DashboardAuth, create_dashboard
from conveyor.dashboard.security import TOKEN_TTL, FormTokens, check_exposure
from conveyor.exceptions import ConfigurationError
from tests.helpers import clear_of_the_minute_turn


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Conveyor]:
    app = Conveyor("shop", broker=f"sqlite:///{tmp_path}/broker.db", result_extended=True)

    @app.task(name="shop.add")
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


def client_for(app: Conveyor, **options: object) -> TestClient:
    return TestClient(create_dashboard(app, **options))  # type: ignore[arg-type]


def token_of(html: str) -> str:
    match = re.search(r'name="token" value="([^"]+)"', html)
    assert match, "the page has an action form"
    return match.group(1)


def dead_letter(app: Conveyor, task: str = "shop.add", reason: str = "unknown_task") -> str:
    """Publish a message and dead-letter it as a worker would; returns its id."""
    result = app.send_task(task, (1, 2), queue="emails")
    (delivery,) = app.broker.lease(["emails"], 1, 1.0)
    app.broker.dead_letter(delivery, reason, "no such task")
    return result.id


def test_pages_show_queues_workers_and_dead_letters(app: Conveyor) -> None:
    app.send_task("shop.add", (1, 2))
    letter = dead_letter(app)
    app.kv.set_value(
        "worker:w1@host",
        json.dumps({"pid": 4242, "queues": ["default", "emails"], "processed": 7}).encode(),
    )
    app.kv.set_value("worker:broken@host", b"{not json")
    client = client_for(app)

    overview = client.get("/")
    assert overview.status_code == 200
    assert 'data-figure="ready">1<' in overview.text
    assert 'data-figure="dead">1<' in overview.text
    assert 'data-figure="workers">2<' in overview.text

    queues = client.get("/queues").text
    assert 'data-queue="default"' in queues and 'data-queue="emails"' in queues

    workers = client.get("/workers").text
    assert "w1@host" in workers and "4242" in workers and "default, emails" in workers
    assert "unreadable announcement" in workers

    dead = client.get("/dead").text
    assert f'data-dead="{letter}"' in dead
    assert "shop.add(1, 2)" in dead
    assert "unknown_task" in dead


def test_task_page_shows_arguments_result_and_404s_for_unknown_ids(app: Conveyor) -> None:
    result = app.send_task("shop.add", (20, 22))
    client = client_for(app)
    page = client.get(f"/tasks/{result.id}")
    assert page.status_code == 200
    assert "QUEUED" in page.text and "shop.add" in page.text
    assert "20" in page.text and "22" in page.text

    missing = client.get("/tasks/does-not-exist")
    assert missing.status_code == 404
    assert "no task with id" in missing.text and "Traceback" not in missing.text
    found = client.get(f"/find?id={result.id}", follow_redirects=False)
    assert found.status_code == 303 and found.headers["location"] == f"/tasks/{result.id}"


def test_dead_letter_filters_narrow_and_stay_in_the_url(app: Conveyor) -> None:
    first = dead_letter(app, reason="unknown_task")
    second = dead_letter(app, reason="expired")
    client = client_for(app)
    page = client.get("/dead?reason=expired").text
    assert f'data-dead="{second}"' in page and f'data-dead="{first}"' not in page
    assert client.get(f"/dead?search={first[:12]}").text.count("data-dead=") == 1
    too_long = client.get("/dead?search=" + "x" * 500)
    assert too_long.status_code == 400 and "longer than" in too_long.text


def test_replay_selected_and_purge_all_matching_are_audited(app: Conveyor) -> None:
    ids = [dead_letter(app, reason="unknown_task") for _ in range(3)]
    other = dead_letter(app, reason="expired")
    client = client_for(app)

    form = {"token": token_of(client.get("/dead").text), "id": ids[:2]}
    answer = client.post("/actions/replay-dead", data=form, follow_redirects=False)
    assert answer.status_code == 303
    assert app.broker.stats(["emails"])["emails"].ready == 2
    assert {d.id for d in app.broker.dead_letters()} == {ids[2], other}

    form = {"token": token_of(client.get("/dead").text), "scope": "matching", "reason": "expired"}
    answer = client.post("/actions/purge-dead", data=form, follow_redirects=False)
    assert answer.headers["location"] == "/dead?reason=expired"
    assert [d.id for d in app.broker.dead_letters()] == [ids[2]]

    audit = client.get("/audit").text
    assert "replay-dead" in audit and "purge-dead" in audit
    assert "dead letters matching reason=expired" in audit
    assert "local (testclient)" in audit


def test_purge_queue_and_revoke(app: Conveyor) -> None:
    waiting = [app.send_task("shop.add", (i, i)) for i in range(3)]
    client = client_for(app)
    form = {"token": token_of(client.get("/queues").text), "queue": "default"}
    assert client.post("/actions/purge-queue", data=form).status_code == 200
    assert app.broker.stats(["default"])["default"].ready == 0

    page = client.get(f"/tasks/{waiting[0].id}").text
    form = {"token": token_of(page), "task_id": waiting[0].id}
    assert client.post("/actions/revoke", data=form).status_code == 200
    assert app.broker.revoked([waiting[0].id]) == {waiting[0].id}


def test_a_token_works_once_and_only_for_its_session(app: Conveyor) -> None:
    ids = [dead_letter(app) for _ in range(2)]
    client = client_for(app)
    token = token_of(client.get("/dead").text)

    stranger = client_for(app)  # another browser: another session cookie
    refused = stranger.post("/actions/purge-dead", data={"token": token, "id": ids})
    assert refused.status_code == 403 and "reload the page" in refused.text
    assert len(app.broker.dead_letters()) == 2

    assert client.post("/actions/purge-dead", data={"token": token, "id": ids[:1]}).is_success
    replayed = client.post("/actions/purge-dead", data={"token": token, "id": ids[1:]})
    assert replayed.status_code == 403
    assert [d.id for d in app.broker.dead_letters()] == ids[1:]

    forged = client.post("/actions/purge-dead", data={"token": "abc.def", "id": ids})
    missing = client.post("/actions/purge-dead", data={"id": ids})
    assert forged.status_code == missing.status_code == 403
    assert (
        client.post(
            "/actions/nope", data={"token": token_of(client.get("/queues").text)}
        ).status_code
        == 404
    )
    assert len(app.broker.dead_letters()) == 1


def test_a_token_expires_and_a_used_one_stays_used(app: Conveyor) -> None:
    now = [1_700_000_000.0]
    tokens = FormTokens(lambda: app.kv, b"k" * 32, clock=lambda: now[0])
    session = "s" * 43
    used, kept = tokens.issue(session), tokens.issue(session)
    assert tokens.redeem(session, used)
    now[0] += TOKEN_TTL + 1  # the claim of ``used`` may be gone by now: the age refuses it
    assert not tokens.redeem(session, used)
    assert not tokens.redeem(session, kept)  # never used, but too old
    nonce, issued, signature = tokens.issue(session).split(".")
    # an issue time moved forward does not match the signature
    assert not tokens.redeem(session, f"{nonce}.{int(issued) + 3000}.{signature}")
    assert not tokens.redeem(session, f"{nonce}.{signature}")  # the old two-part form
    assert tokens.redeem(session, f"{nonce}.{issued}.{signature}")


def test_dead_letters_show_calls_with_secrets_redacted(app: Conveyor) -> None:
    app.send_task(
        "billing.charge",
        (1,),
        {"password": "hunter2", "dsn": "redis://u:pw123@h/0"},
        queue="emails",
    )
    (delivery,) = app.broker.lease(["emails"], 1, 1.0)
    app.broker.dead_letter(delivery, "rejected", "could not reach amqp://guest:guest9@mq//")
    client = client_for(app)
    page = client.get("/dead").text
    assert "password=&#34;[redacted]&#34;" in page and "redis://u:***@h/0" in page
    assert "amqp://guest:***@mq//" in page
    assert not any(secret in page for secret in ("hunter2", "pw123", "guest9"))
    # searching for a secret finds nothing (the search reads the redacted text)
    assert client.get("/dead?search=hunter2").text.count("data-dead=") == 0


def test_read_only_shows_no_forms_and_refuses_actions(app: Conveyor) -> None:
    ids = [dead_letter(app)]
    client = client_for(app, read_only=True)
    page = client.get("/dead").text
    assert "read-only" in page and "/actions/" not in page
    refused = client.post("/actions/purge-dead", data={"token": "x", "id": ids})
    assert refused.status_code == 403
    assert len(app.broker.dead_letters()) == 1


def test_every_answer_carries_a_strict_content_security_policy(app: Conveyor) -> None:
    client = client_for(app, auth=DashboardAuth(token="s3cret"))
    answers = [
        client.get("/"),  # 401
        client.get("/", headers={"Authorization": "Bearer s3cret"}),
        client.get("/tasks/nope", headers={"Authorization": "Bearer s3cret"}),
        client.get("/static/conveyor.js", headers={"Authorization": "Bearer s3cret"}),
    ]
    assert [a.status_code for a in answers] == [401, 200, 404, 200]
    for answer in answers:
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in answers[1].text  # no inline script anywhere


def test_authentication(app: Conveyor) -> None:
    client = client_for(app, auth=DashboardAuth("admin", "pw", token="tok"))

    def basic(user: str, password: str) -> dict[str, str]:
        return {
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        }

    assert client.get("/").status_code == 401
    assert client.get("/").headers["www-authenticate"].startswith("Basic")
    assert client.get("/", headers=basic("admin", "wrong")).status_code == 401
    assert client.get("/", headers=basic("other", "pw")).status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert client.get("/", headers=basic("admin", "pw")).status_code == 200
    assert client.get("/", headers=basic("anyone", "tok")).status_code == 200
    assert client.get("/", headers={"Authorization": "Bearer tok"}).status_code == 200


def test_refuses_a_public_address_without_authentication() -> None:
    check_exposure("127.0.0.1", None)
    check_exposure("::1", None)
    check_exposure("localhost", None)
    check_exposure("0.0.0.0", DashboardAuth(token="t"))
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.com"):
        with pytest.raises(ConfigurationError, match="without authentication"):
            check_exposure(host, None)
    with pytest.raises(ConfigurationError, match="user:password"):
        DashboardAuth.parse("admin")


def test_live_updates_stream_the_changing_part(app: Conveyor) -> None:
    client = client_for(app)
    with client.stream("GET", "/live?page=overview") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
    lines = first_message(client, "/live?page=overview")
    assert lines[0].startswith("id: ") and lines[1] == "event: live"
    html = "\n".join(line.removeprefix("data: ") for line in lines[2:])
    assert 'data-figure="ready">0<' in html and "<html" not in html
    assert client.get("/live?page=nope").status_code == 404


def first_message(client: TestClient, url: str, **headers: str) -> list[str]:
    """The first thing the live stream at ``url`` sends: an event's lines, or a comment."""
    lines: list[str] = []
    with client.stream("GET", url, headers=headers) as stream:
        for line in stream.iter_lines():
            if line == "" and lines:
                break
            lines.append(line)
    return lines


def test_live_updates_skip_what_the_browser_shows(app: Conveyor) -> None:
    client = client_for(app)
    clear_of_the_minute_turn(5)
    page = client.get("/").text
    [shown] = re.findall(r'data-live-digest="([0-9a-f]{16})"', page)
    # The page's block again: nothing to redraw (a redraw would swallow a click).
    assert first_message(client, f"/live?page=overview&digest={shown}") == [": still here"]
    # The browser reconnecting by itself says what it got last.
    assert first_message(client, "/live?page=overview", **{"last-event-id": shown}) == [
        ": still here"
    ]
    # Unknown to the browser (none given, or the data changed): the block, with its digest.
    event = first_message(client, "/live?page=overview")
    assert event[:2] == [f"id: {shown}", "event: live"]
    app.broker.publish([Message(id="m-1", queue="default", body=b"{}")])
    changed = first_message(client, f"/live?page=overview&digest={shown}")
    assert changed[0].startswith("id: ") and changed[0] != f"id: {shown}"
    assert any('data-figure="ready">1<' in line for line in changed)


def test_malformed_dead_letters_show_their_reason(app: Conveyor) -> None:
    app.broker.publish([Message(id="raw-1", queue="default", body=b"\xff\x00 not json")])
    (delivery,) = app.broker.lease(["default"], 1, 1.0)
    app.broker.dead_letter(delivery, "undecodable", "not JSON")
    page = client_for(app).get("/dead").text
    assert "&lt;" in page and "raw-1" in page  # escaped, never raw bytes in the HTML


def test_mounted_under_a_prefix_links_and_redirects_stay_inside(app: Conveyor) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    ids = [dead_letter(app)]
    outer = Starlette(routes=[Mount("/ops/conveyor", app=create_dashboard(app))])
    client = TestClient(outer)
    page = client.get("/ops/conveyor/dead").text
    assert 'href="/ops/conveyor/static/conveyor.css"' in page
    assert 'action="/ops/conveyor/actions/purge-dead"' in page
    assert 'data-root="/ops/conveyor"' in page
    answer = client.post(
        "/ops/conveyor/actions/purge-dead",
        data={"token": token_of(page), "id": ids},
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/ops/conveyor/dead"
    assert client.get("/ops/conveyor/static/conveyor.js").status_code == 200


def test_everything_matching_a_queue_or_nothing(app: Conveyor) -> None:
    emails = [dead_letter(app) for _ in range(3)]
    app.send_task("shop.add", (1, 2), queue="other")
    (delivery,) = app.broker.lease(["other"], 1, 1.0)
    app.broker.dead_letter(delivery, "expired", "")
    client = client_for(app)
    page = client.get("/dead?queue=emails").text
    assert 'data-figure="dead-count">3<' in page
    form = {"token": token_of(page), "scope": "matching", "queue": "emails"}
    client.post("/actions/replay-dead", data=form)
    assert app.broker.stats(["emails"])["emails"].ready == len(emails)
    assert [d.queue for d in app.broker.dead_letters()] == ["other"]
    form = {"token": token_of(client.get("/dead").text), "scope": "matching"}
    client.post("/actions/purge-dead", data=form)
    assert app.broker.dead_letters() == []
