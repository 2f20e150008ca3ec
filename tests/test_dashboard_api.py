"""The dashboard's JSON endpoints (docs/http.md, "Dashboard") over plain HTTP, on real
processes: router, a worker node serving the fixtures' named functions, ``squall http``."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from conftest import wait_for
from squall.http import tokens
from test_http_gateway import start_gateway, start_stack

pytestmark = pytest.mark.timeout(180)


def fetch(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    """(status, JSON body or text, response headers) of one request; no redirect followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, headers or {}, method=method)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        answer = opener.open(request, timeout=30)
    except urllib.error.HTTPError as error:
        answer = error
    raw = answer.read().decode()
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw
    return answer.status, parsed, answer.headers


def test_status_tasks_records_and_workers_are_the_routers_answers(cluster) -> None:
    api = start_stack(cluster)
    with cluster.executor() as ex:
        for i in range(5):
            assert ex.submit("math.add", i, 1).result(10) == i + 1
        with pytest.raises(ValueError):
            ex.submit("text.shout", "").result(10)
        stats = ex.stats()
        status = fetch(api.url + "/v1/status")[1]
        for key in ("submitted", "succeeded", "failed", "workers"):
            assert status["totals"][key] == stats[key], key
        assert status["totals"]["succeeded"] == 5 and status["totals"]["failed"] == 1

        code, page, _ = fetch(api.url + "/v1/tasks?state=failed")
        assert code == 200 and [t["name"] for t in page["tasks"]] == ["text.shout"]
        failed = page["tasks"][0]
        assert (failed["error_type"], failed["error_message"]) == ("ValueError", "nothing to shout")
        page = fetch(api.url + "/v1/tasks?name=math&limit=2")[1]
        assert len(page["tasks"]) == 2 and page["next"] == 2
        assert all(t["name"] == "math.add" for t in page["tasks"])
        rest = fetch(api.url + "/v1/tasks?name=math&limit=2&offset=4")[1]
        assert len(rest["tasks"]) == 1 and rest["next"] is None
        later = fetch(api.url + f"/v1/tasks?since={time.time() + 60}")[1]
        assert later["tasks"] == []
        code, error, _ = fetch(api.url + "/v1/tasks?state=bogus")
        assert (code, error["error"]["code"]) == (400, "bad_request")
        code, error, _ = fetch(api.url + "/v1/tasks?limit=many")
        assert (code, error["error"]["code"]) == (400, "bad_request")

        code, record, _ = fetch(api.url + f"/v1/tasks/{failed['id']}/record")
        assert code == 200 and record["state"] == "failed"
        assert 'raise ValueError("nothing to shout")' in record["traceback"]
        assert [event for event, _ in record["timeline"]] == ["submitted", "started", "failed"]
        code, error, _ = fetch(api.url + "/v1/tasks/00000000000000ff/record")
        assert (code, error["error"]["code"]) == (404, "task_not_found")

        listed = fetch(api.url + "/v1/workers")[1]
        pids = [w["pid"] for w in listed["workers"]]
        assert pids == [w["pid"] for w in ex.status()["workers"]] and len(pids) == 1
        code, drained, _ = fetch(api.url + f"/v1/workers/{pids[0]}/drain", "POST")
        assert code == 200 and drained["drained"] is True
        states = {w["pid"]: w["state"] for w in ex.status()["workers"]}
        assert states[pids[0]] == "draining"
        code, error, _ = fetch(api.url + "/v1/workers/999999999/drain", "POST")
        assert (code, error["error"]["code"]) == (404, "worker_not_found")
        code, error, _ = fetch(api.url + "/v1/workers/abc/drain", "POST")
        assert (code, error["error"]["code"]) == (400, "bad_request")


def test_any_task_is_cancelled_by_id_and_a_failed_background_task_retried(cluster) -> None:
    api = start_stack(cluster)
    with cluster.executor() as ex:
        waiting = ex.options(queue="nobody").submit("sleep.echo", 0)  # no worker serves it
        found = wait_for(
            lambda: fetch(api.url + "/v1/tasks?queue=nobody")[1]["tasks"], 10, "task listed"
        )
        ordinary = found[0]["id"]
        assert len(ordinary) == 16 and not found[0]["background"]
        code, answer, _ = fetch(api.url + f"/v1/tasks/{ordinary}", "DELETE")
        assert (code, answer) == (200, {"id": ordinary, "cancelled": True})
        with pytest.raises(concurrent.futures.CancelledError):
            waiting.result(10)
        code, answer, _ = fetch(api.url + f"/v1/tasks/{ordinary}", "DELETE")
        assert (code, answer["cancelled"]) == (200, False)  # it had ended
        code, error, _ = fetch(api.url + "/v1/tasks/00000000000000ff", "DELETE")
        assert (code, error["error"]["code"]) == (404, "task_not_found")

        code, failed = api.call("text.shout", "", wait=10)
        assert failed["state"] == "failed"
        code, retried, _ = fetch(api.url + f"/v1/tasks/{failed['id']}/retry", "POST")
        assert code == 200 and retried["id"] != failed["id"]
        again = fetch(api.url + f"/v1/tasks/{retried['id']}?wait=10")[1]
        assert again["state"] == "failed" and again["error"]["message"] == "nothing to shout"

        code, succeeded = api.call("math.add", 1, 2, wait=10)
        code, error, _ = fetch(api.url + f"/v1/tasks/{succeeded['id']}/retry", "POST")
        assert (code, error["error"]["code"]) == (409, "not_retryable")
        with pytest.raises(ValueError):
            ex.submit("text.shout", "").result(10)
        plain = fetch(api.url + "/v1/tasks?state=failed&name=shout")[1]["tasks"]
        plain_id = next(t["id"] for t in plain if not t["background"])
        code, error, _ = fetch(api.url + f"/v1/tasks/{plain_id}/retry", "POST")
        assert (code, error["error"]["code"]) == (409, "not_retryable")


def test_schedules_are_listed_paused_and_resumed(cluster) -> None:
    api = start_stack(cluster)
    with cluster.executor() as ex:
        ex.schedule("report", time.time, every=3600)
        listed = fetch(api.url + "/v1/schedules")[1]["schedules"]
        assert [(s["name"], s["paused"]) for s in listed] == [("report", False)]
        code, answer, _ = fetch(api.url + "/v1/schedules/report/pause", "POST")
        assert (code, answer) == (200, {"name": "report", "paused": True})
        assert ex.schedules()[0].paused
        code, answer, _ = fetch(api.url + "/v1/schedules/report/resume", "POST")
        assert (code, answer["paused"]) == (200, False)
        assert not ex.schedules()[0].paused
        code, error, _ = fetch(api.url + "/v1/schedules/nothing/pause", "POST")
        assert (code, error["error"]["code"]) == (404, "schedule_not_found")


def test_the_stream_sends_router_events_and_a_status_every_second(cluster) -> None:
    api = start_stack(cluster)
    seen: list[tuple[str, Any, float]] = []
    done = threading.Event()

    def read() -> None:
        with urllib.request.urlopen(api.url + "/v1/stream", timeout=30) as stream:
            event = ""
            for line in stream:
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    event = text[len("event: ") :]
                elif text.startswith("data: "):
                    seen.append((event, json.loads(text[len("data: ") :]), time.monotonic()))
                if done.is_set():
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: any(e == "status" for e, _, _ in seen), 10, "a first status event")
    with cluster.executor() as ex:
        assert ex.submit("math.add", 20, 22).result(10) == 42
        with pytest.raises(ValueError):
            ex.submit("text.shout", "").result(10)

        def kinds() -> list[str]:
            return [e for e, data, _ in seen if data.get("name") in ("math.add", "text.shout")]

        wait_for(lambda: "task.failed" in kinds(), 10, "the failure's event")
        assert kinds()[:3] == ["task.submitted", "task.started", "task.succeeded"]
        failure = next(data for e, data, _ in seen if e == "task.failed")
        assert (failure["error_type"], failure["error_message"]) == (
            "ValueError",
            "nothing to shout",
        )
        wait_for(
            lambda: [d for e, d, _ in seen if e == "status"][-1]["totals"]["failed"] == 1,
            5,
            "a status event counting the failure",
        )
    wait_for(lambda: sum(e == "status" for e, _, _ in seen) >= 4, 10, "status events")
    times = [t for e, _, t in seen if e == "status"]
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    assert 0.5 < gaps[len(gaps) // 2] < 2.0  # about one a second
    done.set()


def test_a_browser_session_is_a_cookie_and_cookie_requests_that_change_things_need_a_header(
    cluster, tmp_path
) -> None:
    secret = tokens.create("ops", str(tmp_path / "t"))
    api = start_stack(cluster, "--tokens", str(tmp_path / "t"))
    url = api.url
    assert fetch(url + "/v1/status")[0] == 401
    code, _, headers = fetch(url + "/")
    assert (code, headers["Location"]) == (302, "/login")
    code, page, _ = fetch(url + "/login")
    assert code == 200 and 'data-testid="login-token"' in page
    assert fetch(url + "/static/app.js")[0] == 200  # the page's own files need no token

    session = {"token": secret}
    code, error, _ = fetch(url + "/v1/session", "POST", session)
    assert (code, error["error"]["code"]) == (403, "csrf")  # a cross-site form cannot log in
    guard = {"X-Squall-Request": "1"}
    code, error, _ = fetch(url + "/v1/session", "POST", {"token": "sqt_wrong"}, guard)
    assert (code, error["error"]["code"]) == (401, "unauthorized")
    code, answer, headers = fetch(url + "/v1/session", "POST", session, guard)
    assert (code, answer["name"]) == (200, "ops")
    cookie_header = headers["Set-Cookie"]
    assert "HttpOnly" in cookie_header and "SameSite=Strict" in cookie_header
    assert "Secure" not in cookie_header  # plain HTTP here: a Secure cookie would not return
    cookie = {"Cookie": cookie_header.split(";")[0]}
    assert cookie["Cookie"] == f"squall_token={secret}"

    assert fetch(url + "/v1/status", headers=cookie)[0] == 200
    assert fetch(url + "/", headers=cookie)[0] == 200
    assert fetch(url + "/v1/session", headers=cookie)[1] == {"required": True}
    drain = url + "/v1/workers/999999999/drain"
    code, error, _ = fetch(drain, "POST", headers=cookie)
    assert (code, error["error"]["code"]) == (403, "csrf")
    code, error, _ = fetch(drain, "POST", headers={**cookie, **guard})
    assert (code, error["error"]["code"]) == (404, "worker_not_found")  # past the guard
    bearer = {"Authorization": f"Bearer {secret}"}
    code, error, _ = fetch(drain, "POST", headers=bearer)  # scripts need no extra header
    assert (code, error["error"]["code"]) == (404, "worker_not_found")
    code, error, _ = fetch(url + "/v1/status", headers={"Cookie": "squall_token=sqt_wrong"})
    assert (code, error["error"]["code"]) == (401, "unauthorized")

    code, _, headers = fetch(url + "/v1/session", "DELETE", headers=cookie)
    assert code == 200 and "squall_token=" in headers["Set-Cookie"]


def test_without_tokens_there_is_no_login(cluster) -> None:
    api = start_stack(cluster)
    code, page, headers = fetch(api.url + "/")
    assert code == 200 and 'type="module" src="/static/app.js"' in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert fetch(api.url + "/login")[0] == 302
    assert fetch(api.url + "/v1/session")[1] == {"required": False}
    assert fetch(api.url + "/static/vendor/uplot/LICENSE")[1].startswith("The MIT License")
    other = start_gateway(cluster)  # a second gateway serves the same page
    assert fetch(other.url + "/v1/status")[1]["totals"]["workers"] == 1


def test_a_page_of_another_site_changes_nothing_and_a_traceparent_is_carried(cluster) -> None:
    api = start_stack(cluster)
    call = api.url + "/v1/functions/math.add/calls?wait=10"
    evil = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    code, error, _ = fetch(call, "POST", {"args": [1, 2]}, evil)
    assert (code, error["error"]["code"]) == (403, "cross_origin")
    own = {"Origin": api.url, "Content-Type": "application/json"}
    code, answer, _ = fetch(call, "POST", {"args": [1, 2]}, own)
    assert code == 200 and answer["result"] == 3
    assert fetch(api.url + "/v1/status", headers=evil)[0] == 200  # reading is not changing

    traced = {"traceparent": "00-" + "12" * 16 + "-" + "34" * 8 + "-01"}
    code, answer, _ = fetch(call, "POST", {"args": [2, 2]}, traced)
    assert code == 200 and answer["result"] == 4
    code, error, _ = fetch(call, "POST", {"args": [2, 2]}, {"traceparent": "nonsense"})
    assert (code, error["error"]["code"]) == (400, "bad_request")
    assert "traceparent" in error["error"]["message"]
