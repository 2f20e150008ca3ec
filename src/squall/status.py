"""``squall status`` and ``squall inspect``: the router's answers to the ``status`` and ``task``
queries, for people (aligned plain text, or a live view on a terminal with ``--watch``) and for
scripts (``--json``, the answers exactly as ``ex.status()`` and ``ex.inspect()`` return them).

Rendering is pure: a status dict or a task record in, text or a rich renderable out, so that
tests and other tools can call it; only :func:`run_status` and :func:`run_inspect` talk to a
router. Plain text and JSON need nothing beyond the standard library; rich (``squall[status]``)
is imported only for a terminal.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO

if TYPE_CHECKING:
    from rich.console import RenderableType

    import squall

#: seconds between two views of ``squall status --watch`` (``--interval``)
DEFAULT_INTERVAL = 1.0
#: the shortest ``--interval``: each view is one status query, which walks every queued task
MIN_INTERVAL = 0.1
#: what to install for the live view
RICH_MISSING = "squall status --watch needs rich on a terminal: pip install 'squall[status]'"
#: characters of an error message shown on one line of a table
MESSAGE_WIDTH = 160

_STATE_STYLES = {
    "up": "green",
    "blocked": "bold red",
    "draining": "yellow",
    "lost": "red",
    "drained": "yellow",
}


# -- argparse types -------------------------------------------------------------------------------


def interval(text: str) -> float:
    """argparse type of ``--interval``: seconds, at least :data:`MIN_INTERVAL`."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= MIN_INTERVAL):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds of at least {MIN_INTERVAL:g}"
        )
    return value


def task_id(text: str) -> str:
    """argparse type of a task id: 16 hex digits, or a background task's 26 characters (a
    malformed id is a bad argument, exit 2; an unknown one is the router's word, exit 1)."""
    from squall.router.monitor import parse_task_id

    try:
        parse_task_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# -- figures as text ------------------------------------------------------------------------------


def age(seconds: float | None) -> str:
    """A coarse duration for a table: ``0.2s``, ``35s``, ``4m05s``, ``2h03m``, ``3d04h``."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    whole = int(s)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def duration(seconds: float | None) -> str:
    """A precise duration for one task: ``85 us``, ``4.5 ms``, ``1.23 s``, then as :func:`age`."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 0.001:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1000:.1f} ms"
    if s < 60:
        return f"{s:.2f} s"
    return age(s)


def utc(t: float | None, millis: bool = False) -> str:
    """A Unix time as ``2025-01-31 12:00:00`` (UTC), with milliseconds if asked."""
    if not t:
        return "-"
    when = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    text = when.strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-3] if millis else text[:-7]


def mib(size: float | None) -> str:
    return "-" if not size else f"{size / (1 << 20):.1f}"


def number(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else "-"


def counted(n: Any, thing: str) -> str:
    """``1 worker``, ``3 workers``."""
    return f"{number(n)} {thing}{'' if n == 1 else 's'}"


def rate(r: Any) -> str:
    return f"{r:.1f}" if isinstance(r, int | float) else "-"


def one_line(text: str | None, width: int = MESSAGE_WIDTH) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def error_text(record: dict[str, Any]) -> str:
    """``KeyError: 'x'``: a failure's type and message, on one line."""
    kind, message = record.get("error_type") or "", one_line(record.get("error_message"))
    return f"{kind}: {message}" if kind and message else kind or message or "-"


def _limit_text(limit: dict[str, Any] | None) -> str:
    if not limit:
        return "-"
    parts = [str(limit["rate"])] if limit.get("rate") else []
    if limit.get("concurrency"):
        parts.append(f"{limit['concurrency']} at once")
    return ", ".join(parts) or "-"


# -- the status view ------------------------------------------------------------------------------


class Section(NamedTuple):
    """One table of the status view: the same rows are drawn as text or as a rich table."""

    title: str
    headers: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    #: columns drawn right-aligned (numbers)
    right: frozenset[int] = frozenset()
    #: drawn instead of an empty table (None: leave the section out when it is empty)
    empty: str | None = "(none)"


def header(status: dict[str, Any]) -> list[str]:
    """Two lines: the router (address, pid, uptime, resources) and when, then the fleet."""
    router = status.get("router") or {}
    totals = status.get("totals") or {}
    history = status.get("history") or {}
    about = [f"pid {router['pid']}"] if router.get("pid") else []
    if router.get("uptime") is not None:
        about.append(f"up {age(router['uptime'])}")
    if router.get("cpu_seconds") is not None:
        about.append(f"cpu {router['cpu_seconds']:.1f}s")
    if router.get("rss"):
        about.append(f"rss {mib(router['rss'])} MiB")
    if router.get("open_fds") is not None:
        about.append(f"{router['open_fds']} fds")
    if router.get("backlogged_peers"):
        about.append(f"{router['backlogged_peers']} peers backlogged")
    endpoint = router.get("endpoint") or ""
    first = f"squall router {endpoint}".rstrip()
    if about:
        first += f" ({', '.join(about)})"
    first += f" at {utc(status.get('time'))} UTC"
    fleet = [
        counted(totals.get("workers"), "worker"),
        f"capacity {number(totals.get('capacity'))}",
        counted(totals.get("clients"), "client"),
    ]
    if history:
        fleet.append(
            f"history {number(history.get('kept'))} of {number(history.get('max'))} finished"
        )
    return [first, ", ".join(fleet)]


def sections(status: dict[str, Any]) -> list[Section]:
    """The tables of the status view: workers, gone workers, queues, totals, failures."""
    now = status.get("time") or time.time()
    workers = status.get("workers") or []
    gone = status.get("gone_workers") or []
    queues = status.get("queues") or {}
    totals = status.get("totals") or {}
    outcomes = status.get("outcomes") or {}
    rates = status.get("rates") or {}
    failures = status.get("recent_failures") or []

    worker_rows = [
        (
            str(w.get("host") or "-"),
            str(w.get("pid")),
            str(w.get("state") or "-"),
            ",".join(w.get("queues") or ()) or "-",
            number(w.get("capacity")),
            number(w.get("running")),
            number(w.get("done")),
            age(w.get("last_heartbeat_age")),
            mib(w.get("rss")),
            age(w.get("up_for")),
        )
        for w in workers
    ]
    gone_rows = [
        (
            str(w.get("host") or "-"),
            str(w.get("pid")),
            str(w.get("state") or "-"),
            ",".join(w.get("queues") or ()) or "-",
            number(w.get("done")),
            f"{utc(w.get('since'))} ({age(now - w['since'])} ago)" if w.get("since") else "-",
        )
        for w in gone
    ]
    limited = any(q.get("limit") for q in queues.values())
    queue_rows = []
    for name in sorted(queues):
        q = queues[name]
        row = (
            name,
            number(q.get("queued")),
            number(q.get("running")),
            number(q.get("scheduled")),
            number(q.get("workers")),
            rate(q.get("rate_in")),
            rate(q.get("rate_out")),
            age(q.get("oldest_wait")),
        )
        queue_rows.append((*row, _limit_text(q.get("limit"))) if limited else row)
    queue_headers = _QUEUE_HEADERS + (("LIMIT",) if limited else ())
    total_row = (
        number(totals.get("submitted")),
        number(totals.get("succeeded", outcomes.get("succeeded"))),
        number(totals.get("failed")),
        number(totals.get("cancelled")),
        number(outcomes.get("expired")),
        number(totals.get("redelivered")),
        number(totals.get("queued")),
        number(totals.get("scheduled")),
        number(totals.get("running")),
        rate(rates.get("in")),
        rate(rates.get("out")),
    )
    failure_rows = [
        (
            str(f.get("id")),
            str(f.get("name") or "-"),
            str(f.get("queue") or "-"),
            f"{age(now - f['finished'])} ago" if f.get("finished") else "-",
            error_text(f),
        )
        for f in failures
    ]
    return [
        Section("WORKERS", _WORKER_HEADERS, worker_rows, frozenset(range(4, 10))),
        Section(
            "GONE WORKERS",
            ("HOST", "PID", "STATE", "QUEUES", "DONE", "SINCE (UTC)"),
            gone_rows,
            frozenset((4,)),
            empty=None,
        ),
        Section("QUEUES", queue_headers, queue_rows, frozenset(range(1, len(queue_headers)))),
        Section("TOTALS", _TOTAL_HEADERS, [total_row], frozenset(range(len(_TOTAL_HEADERS)))),
        Section("RECENT FAILURES", ("ID", "NAME", "QUEUE", "FINISHED", "ERROR"), failure_rows),
    ]


_WORKER_HEADERS = (
    "HOST",
    "PID",
    "STATE",
    "QUEUES",
    "CAPACITY",
    "RUNNING",
    "DONE",
    "HEARTBEAT",
    "RSS MiB",
    "UP",
)
_QUEUE_HEADERS: tuple[str, ...] = (
    "QUEUE",
    "QUEUED",
    "RUNNING",
    "SCHEDULED",
    "WORKERS",
    "IN/S",
    "OUT/S",
    "OLDEST WAIT",
)
_TOTAL_HEADERS = (
    "SUBMITTED",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "EXPIRED",
    "REDELIVERED",
    "QUEUED",
    "SCHEDULED",
    "RUNNING",
    "IN/S",
    "OUT/S",
)


def _table_lines(section: Section) -> list[str]:
    rows = [section.headers, *section.rows]
    widths = [max(len(row[c]) for row in rows) for c in range(len(section.headers))]

    def cell(c: int, text: str) -> str:
        return text.rjust(widths[c]) if c in section.right else text.ljust(widths[c])

    return ["  " + "  ".join(cell(c, t) for c, t in enumerate(row)).rstrip() for row in rows]


def render_text(status: dict[str, Any]) -> str:
    """The status view as plain text: aligned columns, no colour, no escape codes."""
    lines = header(status)
    for section in sections(status):
        if not section.rows and section.empty is None:
            continue
        lines += ["", section.title]
        lines += _table_lines(section) if section.rows else [f"  {section.empty}"]
    return "\n".join(lines) + "\n"


def render_rich(status: dict[str, Any]) -> RenderableType:
    """The status view as rich tables, for a terminal (needs rich: ``squall[status]``)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    first, fleet = header(status)
    parts: list[RenderableType] = [Text(first, style="bold"), Text(fleet, style="dim")]
    for section in sections(status):
        if not section.rows and section.empty is None:
            continue
        parts.append(Text(""))
        if not section.rows:
            parts += [Text(section.title, style="bold"), Text(f"  {section.empty}", style="dim")]
            continue
        table = Table(
            title=section.title,
            title_justify="left",
            title_style="bold",
            box=box.SIMPLE_HEAD,
            show_edge=False,
        )
        for c, name in enumerate(section.headers):
            table.add_column(name, justify="right" if c in section.right else "left")
        for row in section.rows:
            table.add_row(*(_styled(section, c, text) for c, text in enumerate(row)))
        parts.append(table)
    return Group(*parts)


def _styled(section: Section, column: int, text: str) -> Any:
    from rich.text import Text

    name = section.headers[column]
    if name == "STATE":
        return Text(text, style=_STATE_STYLES.get(text, ""))
    if name == "ERROR" or (name == "FAILED" and text not in ("0", "-")):
        return Text(text, style="red")
    return text


# -- one task -------------------------------------------------------------------------------------


def render_task(record: dict[str, Any]) -> str:
    """One task's record (``ex.inspect``) as plain text: what it is, its timeline in UTC with
    the time between steps, how long it waited and ran, and for a failure its error and
    traceback."""
    kind = "background task" if record.get("background") else "task"
    fields = [
        (kind, str(record.get("id"))),
        ("name", record.get("name") or "-"),
        ("queue", record.get("queue") or "-"),
        ("state", record.get("state") or "-"),
        ("attempts", str(record.get("attempts") if record.get("attempts") is not None else "-")),
        ("worker", f"pid {record['worker_pid']}" if record.get("worker_pid") else "-"),
    ]
    if record.get("priority"):
        fields.append(("priority", str(record["priority"])))
    for label, key in (("not before", "not_before"), ("expires", "expires")):
        if record.get(key):
            fields.append((label, f"{utc(record[key], millis=True)} UTC"))
    submitted, started = record.get("submitted"), record.get("started")
    finished = record.get("finished")
    if submitted and started:
        since = max(submitted, record.get("not_before") or 0)
        fields.append(("waited", duration(started - since)))
    runtime = record.get("runtime")
    if runtime is None and started and finished:
        runtime = finished - started
    if runtime is not None:
        fields.append(("ran", duration(runtime)))
    if record.get("error_type") or record.get("error_message"):
        fields.append(("error", error_text(record)))
    if record.get("reason"):
        fields.append(("reason", one_line(record["reason"])))
    width = max(len(label) for label, _ in fields)
    lines = [f"{label.ljust(width)}  {value}" for label, value in fields]
    timeline = record.get("timeline") or []
    if timeline:
        lines += ["", "timeline (UTC)"]
        previous: float | None = None
        step = max(len(str(event)) for event, _ in timeline)
        for event, t in timeline:
            after = f"  +{duration(t - previous)}" if previous is not None else ""
            lines.append(f"  {utc(t, millis=True)}  {str(event).ljust(step)}{after}".rstrip())
            previous = t
    traceback = record.get("traceback")
    if traceback:
        lines += ["", "traceback (on the worker)"]
        lines += ["  " + line for line in str(traceback).rstrip("\n").splitlines()]
    return "\n".join(lines) + "\n"


# -- the commands ---------------------------------------------------------------------------------


def _executor(args: argparse.Namespace) -> squall.Executor:
    import squall
    from squall import log

    # The view is the output: the client's own warnings ("router silent; reconnecting")
    # would tear a live view apart and add a line to a one-line error. SQUALL_LOG_LEVEL wins.
    log.configure(level=os.environ.get(log.LEVEL_ENV) or "error", process="status")
    return squall.Executor(
        args.connect, auth=args.auth, key=args.key, insecure=args.insecure, connect_timeout=10
    )


def run_status(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``squall status``: one view, or (``--watch``) one every ``--interval`` seconds until
    Ctrl-C (exit 0). On a terminal the view is drawn with rich when it is installed, and
    ``--watch`` redraws it in place (so there it needs rich: exit 2 without it, before
    connecting); elsewhere it is plain text, or JSON with ``--json``.

    Raises:
        squall.StartupError: the router did not answer within 10 s (one line, exit 1).
        squall.Unavailable: it stopped answering (one view only: ``--watch`` shows the
            reason and keeps asking, as the client reconnects).
    """
    stream = out if out is not None else sys.stdout
    terminal = stream.isatty() and not args.json
    live = args.watch and terminal
    rich_ok = terminal and _has_rich()  # (not even imported for a pipe)
    if live and not rich_ok:
        sys.stderr.write(RICH_MISSING + "\n")
        return 2
    try:
        with _executor(args) as ex:
            if live:
                _watch_live(ex, args.interval)
            elif args.watch:
                _watch_plain(ex, args.interval, args.json, stream)
            elif args.json:
                stream.write(json.dumps(ex.status()) + "\n")
            elif terminal and rich_ok:
                from rich.console import Console

                Console(file=stream).print(render_rich(ex.status()))
            else:
                stream.write(render_text(ex.status()))
    except ValueError as exc:  # the router refused the query: its one-line reason
        sys.stderr.write(f"squall status: {one_line(str(exc), 300)}\n")
        return 1
    except KeyboardInterrupt:  # the way to stop --watch; a single view stopped early, too
        pass
    except BrokenPipeError:  # `squall status --watch | head`: the reader has seen enough
        _quiet_stdout()
    return 0


def _has_rich() -> bool:
    try:
        import rich.live  # noqa: F401
    except ImportError:
        return False
    return True


def _watch_live(ex: squall.Executor, every: float) -> None:
    """Redraw the view in place every ``every`` seconds (rich's Live, refreshed only when a
    new answer is in: a redraw without one would show nothing new)."""
    from rich.console import Console
    from rich.live import Live

    with Live(
        _view_or_error(ex, render_rich, _rich_error),
        console=Console(),
        auto_refresh=False,
        vertical_overflow="visible",
    ) as view:
        while True:
            time.sleep(every)
            view.update(_view_or_error(ex, render_rich, _rich_error), refresh=True)


def _watch_plain(ex: squall.Executor, every: float, as_json: bool, stream: TextIO) -> None:
    """``--watch`` into a pipe or a file: a snapshot every ``every`` seconds, separated by a
    blank line (JSON: one object a line). Printing, rather than refusing, makes a log of the
    fleet over time (``squall status --watch | tee fleet.log``) and lets ``watch``-style
    tools and tests read it; only redrawing in place needs a terminal."""
    first = True
    while True:
        if as_json:
            text = _view_or_error(ex, lambda s: json.dumps(s) + "\n", _json_error)
        else:
            text = _view_or_error(ex, render_text, lambda line: line + "\n")
            text = text if first else "\n" + text
        stream.write(text)
        stream.flush()
        first = False
        time.sleep(every)


def _view_or_error(
    ex: squall.Executor,
    render: Callable[[dict[str, Any]], Any],
    error: Callable[[str], Any],
) -> Any:
    """The view of the router's answer now, or one line saying why there is none (while
    watching, a router that restarts or stalls is shown, not fatal: the client reconnects)."""
    from squall.errors import SquallError

    try:
        return render(ex.status())
    except (SquallError, ValueError) as exc:
        return error(f"{utc(time.time())} UTC: {exc}")


def _rich_error(line: str) -> Any:
    from rich.text import Text

    return Text(line, style="bold red")


def _json_error(line: str) -> str:
    return json.dumps({"time": time.time(), "error": line}) + "\n"


def _quiet_stdout() -> None:
    """After the reader of stdout went away: point stdout at /dev/null, so that Python's
    final flush does not complain about the broken pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run_inspect(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``squall inspect TASK_ID``: the task's record, as text or (``--json``) one object;
    an id the router does not know (or no longer remembers): one line on stderr, exit 1."""
    stream = out if out is not None else sys.stdout
    with _executor(args) as ex:
        try:
            record = ex.inspect(args.task_id)
        except ValueError as exc:
            reason = str(exc).removeprefix(f"{args.task_id}: ")
            sys.stderr.write(f"squall inspect: {one_line(reason, 300)}\n")
            return 1
    stream.write(json.dumps(record) + "\n" if args.json else render_task(record))
    return 0
