"""The HTTP gateway (docs/http.md) on real processes: router, worker node serving named
functions, ``squall http``; real HTTP from this process (urllib, aiohttp, curl)."""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import wait_for
from squall.http import tokens

pytestmark = pytest.mark.timeout(180)

FIXTURES = Path(__file__).resolve().parent.parent / "clients" / "fixtures"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "http.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    """A gateway under test, and plain HTTP calls to it."""

    def __init__(self, url: str, token: str = "") -> None:
        self.url, self.token = url, token

    def request(self, method: str, path: str, body: Any = None, token: str | None = None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        token = self.token if token is None else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def call(self, name: str, *args: Any, wait: float | None = None, **extra: Any):
        query = f"?wait={wait}" if wait is not None else ""
        return self.request("POST", f"/v1/functions/{name}/calls{query}", {"args": args, **extra})


def start_stack(cluster, *gateway_flags: str, concurrency: int = 100, router=()) -> Api:
    cluster.start_router(*router)
    env = {"PYTHONPATH": str(FIXTURES)}
    cluster.start_workers(1, concurrency, "--import", "squall_fixtures", env=env)
    return start_gateway(cluster, *gateway_flags)


def start_gateway(cluster, *flags: str, port: int | None = None) -> Api:
    port = port or free_port()
    gateway = cluster.start(
        "http", "--connect", cluster.address, "--bind", f"127.0.0.1:{port}", *flags
    )
    api = Api(f"http://127.0.0.1:{port}")

    def healthy() -> bool:
        try:
            return api.request("GET", "/v1/health")[0] == 200
        except OSError:
            return False

    wait_for(healthy, 30, "the gateway answers")
    api.proc = gateway  # type: ignore[attr-defined]
    return api


def test_named_functions_are_called_over_http_with_json(cluster) -> None:
    api = start_stack(cluster)
    with cluster.executor() as ex:
        ex.publish("published.double", lambda x: 2 * x)
    status, task = api.call("math.add", 2, 3, wait=10)
    assert (status, task["state"], task["result"]) == (200, "succeeded", 5)
    status, task = api.call("published.double", 21, wait=10)
    assert (status, task["result"]) == (200, 42)
    status, task = api.call("text.shout", "", wait=10)
    assert status == 200 and task["state"] == "failed"
    assert task["error"]["type"] == "ValueError"
    assert task["error"]["message"] == "nothing to shout"
    assert 'raise ValueError("nothing to shout")' in task["error"]["traceback"]
    status, error = api.call("no.such.function", wait=1)
    assert (status, error["error"]["code"]) == (404, "unknown_function")
    status, listed = api.request("GET", "/v1/functions")
    names = {f["name"]: f for f in listed["functions"]}
    assert names["published.double"]["version"] == 1 and names["math.add"]["workers"] == 1
    status, doc = api.request("GET", "/v1/openapi.json")
    assert doc["openapi"].startswith("3.1") and "/v1/functions/{name}/calls" in doc["paths"]
    assert "unpickling=disabled" in api.proc.output()  # type: ignore[attr-defined]
    assert "unpickling=disabled" in cluster.router.output()


def test_without_wait_the_id_comes_back_and_the_task_goes_queued_running_succeeded(
    cluster,
) -> None:
    api = start_stack(cluster, concurrency=1)
    api.call("sleep.echo", 1.0)  # takes the one slot
    status, accepted = api.call("sleep.echo", 0.6, "late")
    assert status == 202 and accepted["state"] == "queued"
    task_id = accepted["id"]
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = api.request("GET", f"/v1/tasks/{task_id}")[1]["state"]
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == "succeeded":
            break
        time.sleep(0.05)
    assert seen == ["queued", "running", "succeeded"]
    assert api.request("GET", f"/v1/tasks/{task_id}")[1]["result"] == "late"
    status, _ = api.request("GET", "/v1/tasks/01M8XKXX6H4M8PTAG0GDAX27RR")
    assert status == 404


def test_server_sent_events_carry_a_generators_values_as_they_are_yielded(cluster) -> None:
    api = start_stack(cluster)
    status, accepted = api.call("count.up", 4, 0.3, stream=True)
    assert status == 202
    started = time.monotonic()
    arrivals: list[tuple[str, Any, float]] = []
    url = f"{api.url}/v1/tasks/{accepted['id']}/events"
    with urllib.request.urlopen(url, timeout=30) as events:
        assert events.headers["Content-Type"].startswith("text/event-stream")
        event = ""
        for raw in events:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                arrivals.append((event, json.loads(line[6:]), time.monotonic() - started))
    values = [data for event, data, _ in arrivals if event == "value"]
    assert values == [0, 1, 2, 3]
    end = arrivals[-1]
    assert end[0] == "end" and end[1]["state"] == "succeeded"
    assert arrivals[0][2] < end[2] - 0.5, "the first value came before the generator ended"


class Receiver:
    """A local webhook receiver that fails its first ``failures`` requests."""

    def __init__(self, failures: int = 0, port: int = 0) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.failures = failures
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if owner.failures > 0:
                    owner.failures -= 1
                    self.send_response(500)
                else:
                    owner.received.append((dict(self.headers), body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhooks_are_signed_retried_and_delivered_once_per_task(cluster) -> None:
    api = start_stack(cluster, "--webhook-secret", "s3cret")
    good, flaky = Receiver(), Receiver(failures=3)
    try:
        ids = [api.call("math.add", i, 1, callback_url=good.url)[1]["id"] for i in range(5)]
        flaky_id = api.call("math.add", 10, 1, callback_url=flaky.url)[1]["id"]
        wait_for(lambda: len(good.received) == 5, 30, "one delivery per task")
        wait_for(lambda: len(flaky.received) == 1, 40, "the flaky receiver's 4th try")
        time.sleep(1.5)
        assert len(good.received) == 5 and len(flaky.received) == 1  # and no more
        for headers, body in good.received + flaky.received:
            assert tokens.verify("s3cret", headers["Squall-Signature"], body)
            assert not tokens.verify("s3cret", headers["Squall-Signature"], body + b" ")
            assert not tokens.verify("other", headers["Squall-Signature"], body)
        delivered = {json.loads(body)["id"]: json.loads(body) for _, body in good.received}
        assert set(delivered) == set(ids)
        assert sorted(t["result"] for t in delivered.values()) == [1, 2, 3, 4, 5]
        assert json.loads(flaky.received[0][1])["id"] == flaky_id
    finally:
        good.close()
        flaky.close()


def test_a_gateway_restart_loses_no_pending_callback(cluster, tmp_path) -> None:
    port = free_port()
    api = start_stack(cluster, "--webhook-secret", "s3cret", router=("--data", str(tmp_path)))
    down = f"http://127.0.0.1:{port}/hook"  # nothing listens yet: the delivery keeps failing
    task_id = api.call("math.add", 1, 2, callback_url=down)[1]["id"]
    assert api.call("math.add", 0, 0, wait=10)[1]["state"] == "succeeded"  # it ran meanwhile
    api.proc.stop()  # type: ignore[attr-defined]
    receiver = Receiver(port=port)
    try:
        start_gateway(cluster, "--webhook-secret", "s3cret")
        wait_for(lambda: receiver.received, 30, "the new gateway delivers the pending callback")
        headers, body = receiver.received[0]
        assert json.loads(body)["id"] == task_id and json.loads(body)["result"] == 3
        assert tokens.verify("s3cret", headers["Squall-Signature"], body)
    finally:
        receiver.close()


def test_tokens_are_required_and_a_public_bind_without_them_is_refused(cluster, tmp_path) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "squall", "token", "create", "ci", "--out", str(tmp_path / "t")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    secret = made.stdout.strip().splitlines()[-1]
    assert secret not in (tmp_path / "t" / "ci.token").read_text()  # only its hash is kept
    api = start_stack(cluster, "--tokens", str(tmp_path / "t"))
    assert api.call("math.add", 1, 1, wait=5)[0] == 401
    status, error = api.request("POST", "/v1/functions/math.add/calls", {}, token="sqt_wrong")
    assert (status, error["error"]["code"]) == (401, "unauthorized")
    api.token = secret
    assert api.call("math.add", 1, 1, wait=5)[1]["result"] == 2
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "squall",
            "http",
            "--connect",
            cluster.address,
            "--bind",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "refusing to serve 0.0.0.0:0 without tokens" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_bad_requests_get_a_json_error_with_the_right_status(cluster) -> None:
    api = start_stack(cluster, "--max-body", "1000")
    request = urllib.request.Request(
        f"{api.url}/v1/functions/math.add/calls", b"{not json", method="POST"
    )
    try:
        urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as error:
        assert error.code == 400 and json.loads(error.read())["error"]["code"] == "bad_request"
    status, error = api.call("math.add", 1, 1, options={"priority": "high"})
    assert (status, error["error"]["code"]) == (400, "bad_request")
    status, error = api.call("math.add", "x" * 2000, 1)
    assert (status, error["error"]["code"]) == (413, "too_large")
    status, cancelled = api.request("DELETE", f"/v1/tasks/{api.call('sleep.echo', 30)[1]['id']}")
    assert status == 200 and cancelled["cancelled"] is True


def test_a_thousand_concurrent_calls_through_one_gateway_are_all_answered(cluster) -> None:
    api = start_stack(cluster, concurrency=1000)

    async def run() -> list[Any]:
        limit = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(connector=limit) as session:

            async def one(i: int) -> Any:
                url = f"{api.url}/v1/functions/math.add/calls?wait=30"
                async with session.post(url, json={"args": [i, i]}) as answer:
                    return (await answer.json())["result"]

            return await asyncio.gather(*(one(i) for i in range(1000)))

    assert asyncio.run(run()) == [2 * i for i in range(1000)]


def test_the_curl_examples_of_the_http_docs_run_as_written(cluster) -> None:
    api = start_stack(cluster)
    block = re.search(r"## Examples.*?```sh\n(.*?)```", DOCS.read_text(), re.S)
    assert block is not None
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.group(1)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SQUALL_URL": api.url, "PATH": "/usr/bin:/bin"},
    )
    assert ran.returncode == 0, ran.stderr
    decoder, text, outputs = json.JSONDecoder(), ran.stdout.strip(), []
    while text:  # curl prints no newline after a body: the two bodies run together
        value, end = decoder.raw_decode(text)
        outputs.append(value)
        text = text[end:].strip()
    first, second = outputs
    assert (first["state"], first["result"]) == ("succeeded", 5)
    assert (second["state"], second["result"]) == ("succeeded", 42)


def test_a_full_queue_is_429_and_a_gone_router_is_503(cluster) -> None:
    api = start_stack(cluster, router=("--max-queued", "2"), concurrency=1)
    answers = [api.call("sleep.echo", 5)[0] for _ in range(6)]
    assert 429 in answers, answers
    assert api.call("sleep.echo", 5, wait=0.5)[0] == 429  # refused, however it is asked
    status, error = api.call("sleep.echo", 5)
    if status == 429:
        assert error["error"]["code"] == "queue_full"
    cluster.router.stop()
    wait_for(lambda: api.request("GET", "/v1/health")[0] == 503, 20, "health says no router")
    status, error = api.request("GET", "/v1/health")
    assert error["error"]["code"] == "no_router"


def test_an_inbound_hook_runs_a_function_with_the_body_checking_its_signature(cluster) -> None:
    api = start_stack(cluster, "--hook-secret", "inbound")
    event = json.dumps({"type": "invoice.paid", "amount": 12}).encode()

    def post(signature: str | None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Squall-Signature"] = signature
        req = urllib.request.Request(f"{api.url}/v1/hooks/hooks.receive", event, headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    assert post(None)[0] == 403
    status, error = post(tokens.sign("wrong", event))
    assert (status, error["error"]["code"]) == (403, "bad_signature")
    status, accepted = post(tokens.sign("inbound", event))
    assert status == 202
    task = api.request("GET", f"/v1/tasks/{accepted['id']}?wait=10")[1]
    assert task["result"] == {"received": {"type": "invoice.paid", "amount": 12}}


def test_https_and_an_authenticated_router_with_the_gateways_own_key(cluster, tmp_path) -> None:
    import ssl

    from conftest import make_keys

    keys = make_keys(tmp_path / "keys")
    cluster.start_keyed_router(keys)
    env = {"PYTHONPATH": str(FIXTURES)}
    cluster.start(
        "worker",
        "--connect",
        cluster.address,
        "--processes",
        "1",
        "--auth",
        str(keys["node1"]),
        "--key",
        "node1",
        "--import",
        "squall_fixtures",
        env=env,
    )
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    cluster.start(
        "http",
        "--connect",
        cluster.address,
        "--bind",
        f"127.0.0.1:{port}",
        "--auth",
        str(keys["bob"]),
        "--key",
        "bob",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{port}/v1/functions/math.add/calls?wait=10"

    def called() -> Any:
        req = urllib.request.Request(url, b'{"args": [20, 22]}', method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10, context=context) as answer:
                return json.loads(answer.read())
        except (OSError, urllib.error.HTTPError):
            return None

    task = wait_for(
        lambda: (t := called()) and t.get("state") == "succeeded" and t,
        40,
        "a call over HTTPS through the keyed router",
    )
    assert task["result"] == 42
    with pytest.raises(OSError):  # plain HTTP is not served there
        urllib.request.urlopen(url.replace("https", "http"), timeout=5)
