"""The web dashboard in a real browser: headless Debian chromium driven by selenium through
chromedriver, against real processes (router, worker nodes serving the fixtures' named
functions, ``squall http``). A missing browser fails these tests rather than skipping them.

Each test saves a screenshot under its tmp_path (the path is printed). With
``SQUALL_SCREENSHOTS=DIR`` the overview's and the failed task's are also copied to
``DIR/dashboard-overview.png`` and ``DIR/dashboard-failed-task.png`` (how docs/ got them:
``SQUALL_SCREENSHOTS=docs pytest tests/test_dashboard.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import wait_for
from squall.http import tokens
from test_http_gateway import FIXTURES, start_stack

pytestmark = pytest.mark.timeout(180)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Headless chromium, quit after the test whatever happens."""
    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), f"{path} is missing: apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def by_testid(driver: webdriver.Chrome, name: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{name}"]')


def text_of(driver: webdriver.Chrome, name: str) -> str:
    return str(by_testid(driver, name).text)


def eventually(driver: webdriver.Chrome, predicate: Callable[[], Any], what: str, timeout=20):
    """``predicate()``'s first true value, asked until ``timeout`` s pass (elements that are
    not there yet, or were just redrawn, count as false)."""
    wait = WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.1,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )
    try:
        return wait.until(lambda _: predicate())
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout} s: {what}") from None


def read(driver: webdriver.Chrome, value: Callable[[], Any]) -> Any:
    """``value()``, asked again if what it read was redrawn under it (tables are redrawn
    from each status event)."""
    return eventually(driver, lambda: (value(),), "a steady read")[0]


def accept_confirm(driver: webdriver.Chrome) -> None:
    WebDriverWait(driver, 5).until(expected_conditions.alert_is_present())
    driver.switch_to.alert.accept()


def screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str, docs_name: str = "") -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    target = os.environ.get("SQUALL_SCREENSHOTS")
    if target and docs_name:
        shutil.copy(path, Path(target) / docs_name)
    return path


def script_errors(driver: webdriver.Chrome) -> list[str]:
    """The page's JavaScript errors (not failed loads: a 401 the test asked for is one)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("source") == "javascript"]


def total(driver: webdriver.Chrome, key: str) -> int:
    return int(by_testid(driver, f"total-{key}").get_attribute("data-value"))


def test_the_overview_figures_follow_the_routers_counters_live(cluster, browser, tmp_path):
    api = start_stack(cluster)
    browser.get(api.url + "/")
    eventually(browser, lambda: text_of(browser, "live-state") == "live", "the stream is live")
    eventually(browser, lambda: total(browser, "workers") == 1, "one worker shown")
    browser.execute_script("window.notReloaded = true")
    seen_succeeded: set[int] = set()
    with cluster.executor() as ex:
        done = threading.Event()

        waves = 60 if os.environ.get("SQUALL_SCREENSHOTS") else 8  # a longer chart for docs/
        sizes = [20 + 10 * (wave % 4) for wave in range(waves)]

        def run() -> None:  # waves of tasks over about 4 s, some failing
            try:
                for wave in range(waves):
                    futures = [ex.submit("sleep.echo", 0.05, i) for i in range(sizes[wave])]
                    futures += [ex.submit("text.shout", "") for _ in range(wave % 2)]
                    for future in futures:
                        future.exception(30)
                    time.sleep(0.4)
            finally:
                done.set()

        runner = threading.Thread(target=run)
        runner.start()
        while not done.is_set():  # the figures move while the tasks run
            seen_succeeded.add(total(browser, "succeeded"))
            time.sleep(0.1)
        runner.join()
        stats = ex.stats()
        assert (stats["succeeded"], stats["failed"]) == (sum(sizes), waves // 2)
        for key in ("succeeded", "failed", "workers", "submitted", "completed"):
            eventually(
                browser,
                lambda key=key: total(browser, key) == stats[key],
                f"the page's {key} equals stats()[{key!r}] = {stats[key]}",
            )
    assert len(seen_succeeded - {0, sum(sizes)}) >= 2, f"no live progress: {seen_succeeded}"
    assert browser.execute_script("return window.notReloaded") is True  # no page reload
    assert read(browser, lambda: text_of(browser, "workers-up")) == "1"
    assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="chart-throughput"] canvas')
    assert read(browser, lambda: text_of(browser, "queue-depth-default")) == "0"
    failures = read(
        browser,
        lambda: [
            row.text
            for row in browser.find_elements(By.CSS_SELECTOR, '[data-testid="recent-failure"]')
        ],
    )
    assert failures and "ValueError: nothing to shout" in failures[0]
    time.sleep(1.5)  # a few more points on the charts for the picture
    screenshot(browser, tmp_path, "overview", "dashboard-overview.png")
    assert script_errors(browser) == []


def test_a_failed_task_shows_its_error_and_traceback_and_can_be_retried(cluster, browser, tmp_path):
    api = start_stack(cluster)
    assert api.call("math.add", 1, 2, wait=10)[1]["state"] == "succeeded"
    status, failed = api.call("text.shout", "", wait=10)  # a background task (kept)
    assert failed["state"] == "failed"
    task_id = failed["id"]
    browser.get(api.url + "/#/tasks")
    eventually(browser, lambda: by_testid(browser, f"task-link-{task_id}"), "the task listed")
    Select(by_testid(browser, "filter-state")).select_by_value("failed")
    by_testid(browser, "filter-apply").click()
    eventually(browser, lambda: "state=failed" in browser.current_url, "the filter applied")

    def rows() -> list[tuple[str, str]]:
        found = browser.find_elements(By.CSS_SELECTOR, '[data-testid="task-row"]')
        return [(r.get_attribute("data-id"), r.get_attribute("data-state")) for r in found]

    eventually(browser, lambda: rows() == [(task_id, "failed")], "only the failed task listed")
    assert text_of(browser, f"task-error-{task_id}") == "ValueError: nothing to shout"

    by_testid(browser, f"task-link-{task_id}").click()
    eventually(browser, lambda: text_of(browser, "task-state") == "failed", "the task's page")
    assert text_of(browser, "task-error-type") == "ValueError"
    assert text_of(browser, "task-error-message") == "nothing to shout"
    traceback = text_of(browser, "task-traceback")
    assert traceback.startswith("Traceback (most recent call last):")
    assert 'raise ValueError("nothing to shout")' in traceback
    assert text_of(browser, "task-name") == "text.shout"
    events = browser.find_elements(By.CSS_SELECTOR, '[data-testid="task-timeline"] li')
    assert [e.get_attribute("data-event") for e in events] == ["submitted", "started", "failed"]
    screenshot(browser, tmp_path, "failed-task", "dashboard-failed-task.png")

    by_testid(browser, "task-retry").click()  # a new background task, and its page
    eventually(browser, lambda: task_id not in browser.current_url, "the retry's page")
    new_id = browser.current_url.rsplit("/", 1)[1]
    with cluster.executor() as ex:
        wait_for(lambda: ex.task_info(new_id).state == "failed", 10, "the retry ran")
    eventually(browser, lambda: text_of(browser, "task-state") == "failed", "the retry failed")
    assert text_of(browser, "task-error-message") == "nothing to shout"

    markup = '<img src=x onerror="window.injected = 1"><b>bold</b>'
    with cluster.executor() as ex:
        ex.publish("html.fail", _raise_with_markup)
    hostile = api.call("html.fail", markup, wait=10)[1]
    assert hostile["state"] == "failed"
    browser.get(f"{api.url}/#/tasks/{hostile['id']}")
    eventually(browser, lambda: text_of(browser, "task-state") == "failed", "its page")
    assert text_of(browser, "task-error-message") == markup  # shown as text, never as HTML
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="task"] img, main b')
    assert browser.execute_script("return window.injected") is None
    assert script_errors(browser) == []


def _raise_with_markup(text: str) -> None:
    raise ValueError(text)


def test_cancelling_a_queued_task_from_its_page_cancels_it(cluster, browser, tmp_path):
    api = start_stack(cluster)
    with cluster.executor() as ex:
        future = ex.options(queue="nobody").enqueue(time.sleep, 1)  # no worker serves it
        assert ex.task_info(future.id).state == "queued"
        browser.get(f"{api.url}/#/tasks/{future.id}")
        eventually(browser, lambda: text_of(browser, "task-state") == "queued", "queued shown")
        assert text_of(browser, "task-queue") == "nobody"
        by_testid(browser, "task-cancel").click()
        accept_confirm(browser)
        wait_for(lambda: ex.task_info(future.id).state == "cancelled", 10, "cancelled")
        eventually(
            browser, lambda: text_of(browser, "task-state") == "cancelled", "cancelled shown"
        )
        assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="task-cancel"]')
    screenshot(browser, tmp_path, "cancelled-task")
    assert script_errors(browser) == []


def test_the_workers_page_shows_a_worker_join_drain_and_get_lost(cluster, browser, tmp_path):
    api = start_stack(cluster)
    with cluster.executor() as ex:
        (first,) = [w["pid"] for w in ex.status()["workers"]]
        browser.get(api.url + "/#/workers")
        eventually(browser, lambda: text_of(browser, f"worker-state-{first}") == "up", "first")
        node = cluster.start_workers(
            1, 10, "--import", "squall_fixtures", env={"PYTHONPATH": str(FIXTURES)}
        )
        live = {w["pid"] for w in ex.status()["workers"]}
        (second,) = [p.pid for p in node.descendants() if p.pid in live]
        eventually(browser, lambda: text_of(browser, f"worker-state-{second}") == "up", "joined")

        by_testid(browser, f"drain-{first}").click()
        accept_confirm(browser)
        eventually(
            browser, lambda: text_of(browser, f"worker-state-{first}") == "draining", "draining"
        )
        states = {w["pid"]: w["state"] for w in ex.status()["workers"]}
        assert states[first] == "draining"

        psutil.Process(second).send_signal(signal.SIGKILL)
        eventually(
            browser, lambda: text_of(browser, f"worker-state-{second}") == "lost", "lost", 30
        )
        gone = {w["pid"]: w["state"] for w in ex.status()["gone_workers"]}
        assert gone[second] == "lost"
        classes = read(
            browser, lambda: by_testid(browser, f"worker-{second}").get_attribute("class")
        )
        assert "gone" in classes
        assert not browser.find_elements(By.CSS_SELECTOR, f'[data-testid="drain-{second}"]')
    screenshot(browser, tmp_path, "workers")
    assert script_errors(browser) == []


def test_with_tokens_the_dashboard_asks_for_one_then_works(cluster, browser, tmp_path):
    secret = tokens.create("ops", str(tmp_path / "tokens"))
    api = start_stack(cluster, "--tokens", str(tmp_path / "tokens"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(api.url + "/v1/status", timeout=10)
    assert refused.value.code == 401
    refused.value.close()  # its socket, or a ResourceWarning fails a later test

    browser.get(api.url + "/")
    eventually(browser, lambda: browser.current_url.endswith("/login"), "sent to the login")
    by_testid(browser, "login-token").send_keys("sqt_not-a-token")
    by_testid(browser, "login-submit").click()
    eventually(
        browser,
        lambda: "not one this gateway accepts" in text_of(browser, "login-error"),
        "a wrong token refused",
    )
    screenshot(browser, tmp_path, "login")
    field = by_testid(browser, "login-token")
    field.clear()
    field.send_keys(secret)
    by_testid(browser, "login-submit").click()
    eventually(browser, lambda: total(browser, "workers") == 1, "the overview, logged in")
    eventually(browser, lambda: text_of(browser, "live-state") == "live", "the stream, by cookie")
    assert "squall_token" not in browser.execute_script("return document.cookie")  # HttpOnly
    forged = browser.execute_async_script(  # a request without the page's CSRF header
        "const done = arguments[0];"
        "fetch('/v1/workers/1/drain', {method: 'POST'}).then((r) => done(r.status));"
    )
    assert forged == 403
    by_testid(browser, "logout").click()
    eventually(browser, lambda: browser.current_url.endswith("/login"), "logged out")
    browser.get(api.url + "/")
    eventually(browser, lambda: browser.current_url.endswith("/login"), "the cookie is gone")
    assert script_errors(browser) == []
