"""The ``squall`` command: ``router``, ``worker``, ``keygen``, ``bench``, ``demo``, ``--version``.

Every failure a user can cause (a bad flag, an address that cannot be bound, an unsafe bind) ends
in one line on stderr and a non-zero exit, never a traceback: a bad flag or setting exits 2, as
argparse does (checked when the command line is parsed, before anything starts), any other
refusal 1.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

from squall._version import __version__
from squall.errors import ConfigError, SquallError

if TYPE_CHECKING:
    from squall.config import RouterConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, _usage_line(self.prog, message))


def _usage_line(prog: str, message: str) -> str:
    return f"{prog}: error: {message} (see {prog} --help)\n"


class _BadUsage(ConfigError):
    """A flag or setting that is wrong in itself or against another: exit status 2."""


#: the level names --log-level and SQUALL_LOG_LEVEL accept (squall.log.LEVELS)
_LEVELS = ("debug", "info", "warning", "error", "critical")


def _log_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-json",
        action="store_true",
        default=None,
        help="log one JSON object per line (env SQUALL_LOG_JSON=1)",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=_LEVELS,
        metavar="L",
        help="debug, info, warning, error or critical (env SQUALL_LOG_LEVEL)",
    )


def connect_address(text: str) -> str:
    """argparse type of an address to connect to: one line for a bad one (a port out of
    range, junk after it, no host), not libzmq's "Invalid argument" or a traceback."""
    from squall.config import validate_address

    try:
        return validate_address(text)
    except SquallError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def bind_address(text: str) -> str:
    """argparse type of an address to bind: as :func:`connect_address`, ``*`` allowed."""
    from squall.config import validate_address

    try:
        return validate_address(text, bind=True)
    except SquallError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds(text: str) -> float:
    """argparse type of a duration: a positive, finite number of seconds (a heartbeat of 0
    or less would spin the router's loop)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def queue_names(text: str) -> tuple[str, ...]:
    """argparse type of ``--queues``: comma-separated queue names, each checked."""
    from squall.protocol import MAX_QUEUES, valid_queue

    names = tuple(name.strip() for name in text.split(","))
    bad = [name for name in names if not valid_queue(name)]
    if bad or len(names) > MAX_QUEUES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give 1 to {MAX_QUEUES} comma-separated queue names of letters, digits "
            "and _-.: (e.g. emails,default)"
        )
    return names


def limit_spec(text: str) -> tuple[str, int | None, float, int | None]:
    """argparse type of ``--limit QUEUE=100/s`` / ``QUEUE=concurrency:4``."""
    from squall.protocol import valid_queue
    from squall.router.limits import parse_limit

    try:
        queue, rate, period, concurrency = parse_limit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not valid_queue(queue):
        raise argparse.ArgumentTypeError(f"{queue!r} is not a queue name")
    return queue, rate, period, concurrency


def count(text: str) -> int:
    """argparse type of a count or limit: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def whole(text: str) -> int:
    """argparse type of a count that may be 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 0")
    return value


def metrics_address(text: str) -> str:
    """argparse type of ``--metrics-bind``: HOST:PORT."""
    host, _, port = text.rpartition(":")
    if not host.strip("[]") or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9191)")
    return text


def _directory(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory")
    return text


def _key_name(text: str) -> str:
    from squall.auth import check_name

    try:
        return check_name(text)
    except SquallError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def byte_size(text: str) -> int:
    """``1048576``, ``64MiB``, ``64M`` or ``1g``: a size in bytes (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use e.g. 1048576, 64MiB, 2GiB")
    size = int(match.group(1)) * _UNITS[match.group(2)]
    if size >= 1 << 63:  # libzmq's limits are signed 64-bit
        raise argparse.ArgumentTypeError(f"{text!r} is too large: at most 8EiB")
    return size


def positive_byte_size(text: str) -> int:
    """:func:`byte_size`, at least 1 byte: a limit of 0 would refuse everything."""
    size = byte_size(text)
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size of at least 1 byte")
    return size


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="squall", description="Run Python callables on gevent workers.")
    parser.add_argument("--version", action="version", version=f"squall {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    router = commands.add_parser("router", help="run a router that clients and workers connect to")
    router.add_argument(
        "--bind",
        required=True,
        type=bind_address,
        metavar="ADDR",
        help="address for clients and workers, e.g. tcp://0.0.0.0:5555 (with --auth) or "
        "ipc:///path/to/socket",
    )
    router.add_argument(
        "--insecure",
        action="store_true",
        help="allow TCP without authentication: any local user (on loopback) or anyone who "
        "reaches the address can run code on your workers",
    )
    router.add_argument(
        "--heartbeat",
        type=seconds,
        metavar="S",
        help="seconds between heartbeats (default 1)",
    )
    router.add_argument(
        "--liveness",
        type=seconds,
        metavar="S",
        help="seconds of silence before a worker is declared dead, more than --heartbeat "
        "(default 3)",
    )
    router.add_argument(
        "--max-worker-deaths",
        type=count,
        metavar="N",
        help="a task whose worker dies this often fails with WorkerLost (default 3)",
    )
    router.add_argument(
        "--max-queued",
        type=count,
        metavar="N",
        help="tasks one client may have queued in the router (default 1,000,000)",
    )
    router.add_argument(
        "--max-message-size",
        type=positive_byte_size,
        metavar="BYTES",
        help="disconnect peers sending bigger messages (default 1GiB)",
    )
    limits = (
        ("--max-client-bytes", "argument bytes one client's tasks may hold (default 512MiB)"),
        ("--max-held-bytes", "argument bytes all tasks together may hold (default 2GiB)"),
        ("--max-recent-bytes", "bytes of finished outcomes kept for late dependents (64MiB)"),
        ("--max-body-size", "bytes one function body may have (default 16MiB)"),
        ("--max-backlog-bytes", "bytes waiting for one slow peer before it is cut off (64MiB)"),
    )
    for flag, text in limits:
        router.add_argument(flag, type=positive_byte_size, metavar="BYTES", help=text)
    router.add_argument(
        "--max-backlog",
        type=count,
        metavar="N",
        help="messages waiting for one slow peer before it is cut off (default 10,000)",
    )
    router.add_argument(
        "--auth",
        type=_directory,
        metavar="DIR",
        help="CurveZMQ: DIR/router.key_secret, allowed keys in DIR/clients and DIR/workers "
        "(SIGHUP reloads them)",
    )
    router.add_argument(
        "--data",
        metavar="DIR",
        help="keep background tasks (ex.enqueue) and their outcomes in DIR/squall.db, so that "
        "they survive a restart of the router (default: in memory only)",
    )
    router.add_argument(
        "--fsync",
        choices=("full", "normal", "off"),
        default="full",
        help="with --data: full (default) syncs to disk before confirming an enqueue, so "
        "nothing confirmed is lost even on power loss; normal and off survive a router crash "
        "but an OS crash or power loss may lose the last confirmed tasks",
    )
    router.add_argument(
        "--limit",
        type=limit_spec,
        action="append",
        default=[],
        metavar="QUEUE=RATE",
        help="a global limit on a named queue, across all workers: QUEUE=100/s (starts per "
        "second; also /m, /h), QUEUE=concurrency:4 (running at once), or both, comma "
        "separated; repeat for more queues",
    )
    router.add_argument(
        "--result-ttl",
        type=seconds,
        metavar="S",
        default=86_400.0,
        help="seconds a finished background task's outcome is kept (default 86400: 1 day; a "
        "task's own keep= wins)",
    )
    router.add_argument(
        "--max-kept-bytes",
        type=positive_byte_size,
        metavar="BYTES",
        help="bytes of background tasks and outcomes kept; past it the oldest finished "
        "outcomes expire first (default 1GiB)",
    )
    router.add_argument(
        "--history",
        type=whole,
        default=100_000,
        metavar="N",
        help="finished tasks remembered for squall status, squall inspect and the dashboard "
        "(default 100,000; 0: none)",
    )
    router.add_argument(
        "--metrics-bind",
        type=metrics_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (a loopback address unless "
        "--insecure: the figures name your queues and functions)",
    )
    router.add_argument("--parent-pid", type=count, help=argparse.SUPPRESS)
    _log_flags(router)

    worker = commands.add_parser("worker", help="run a worker node connected to a router")
    worker.add_argument("--connect", required=True, metavar="ADDR", help="the router's address")
    worker.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: number of cores)",
    )
    worker.add_argument(
        "--concurrency", type=int, default=1000, help="tasks at once per process (default 1000)"
    )
    worker.add_argument(
        "--queues",
        type=queue_names,
        metavar="Q1,Q2",
        help="run tasks of these named queues (default: default)",
    )
    worker.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="serve the @squall.function(name) functions of MODULE by name (repeatable; "
        "imported from the current directory too)",
    )
    worker.add_argument("--heartbeat", type=float, help="seconds between heartbeats (default 1)")
    worker.add_argument(
        "--grace", type=float, help="on SIGTERM, seconds running tasks get to finish (default 30)"
    )
    worker.add_argument(
        "--block-limit",
        type=float,
        metavar="S",
        help="restart a process whose event loop one task has blocked this long; that task "
        "fails with TaskTimeout (default 60, 0: never)",
    )
    worker.add_argument(
        "--max-tasks-per-process",
        type=int,
        metavar="N",
        help="replace a process after N tasks, losing none (default 0: no limit)",
    )
    worker.add_argument(
        "--max-memory-per-process",
        type=int,
        metavar="MB",
        help="replace a process past MB MiB of resident memory, losing no task (default 0: no "
        "limit)",
    )
    worker.add_argument(
        "--auth", metavar="DIR", help="CurveZMQ: DIR/router.key and this node's DIR/KEY.key_secret"
    )
    worker.add_argument("--key", default="worker", help="key pair name in --auth (default worker)")
    worker.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback router without authentication: whoever answers there can "
        "run any code on this worker",
    )
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    _log_flags(worker)

    _keygen_flags(commands.add_parser("keygen", **_KEYGEN))

    bench = commands.add_parser("bench", help="measure squall here (under a minute)")
    bench.add_argument(
        "--connect",
        type=connect_address,
        metavar="ADDR",
        help="a running router (default: embedded)",
    )
    bench.add_argument("--quick", action="store_true", help="smaller workloads, one run")
    bench.add_argument(
        "--runs", type=count, default=3, metavar="N", help="measured runs (default 3)"
    )
    bench.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback router without auth"
    )

    schedules = commands.add_parser("schedules", help="list a router's periodic schedules")
    schedules.add_argument(
        "--connect", required=True, type=connect_address, metavar="ADDR", help="the router"
    )
    schedules.add_argument("--auth", metavar="DIR", help="CurveZMQ: this client's keys")
    schedules.add_argument("--key", default="client", help="key pair name in --auth")
    schedules.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback router without auth"
    )
    schedules.add_argument("--json", action="store_true", help="one JSON object per schedule")
    _operator_flags(commands)

    http = commands.add_parser(
        "http", help="serve squall's named functions over HTTP (needs squall[http])"
    )
    http.add_argument("--connect", required=True, type=connect_address, metavar="ADDR")
    http.add_argument(
        "--bind", default="127.0.0.1:8000", metavar="HOST:PORT", help="default 127.0.0.1:8000"
    )
    http.add_argument("--tokens", metavar="DIR", help="accept the bearer tokens made into DIR")
    http.add_argument("--webhook-secret", metavar="S", help="signs callback deliveries")
    http.add_argument("--hook-secret", metavar="S", help="inbound /v1/hooks need its signature")
    http.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate")
    http.add_argument("--tls-key", metavar="FILE", help="... and this key")
    http.add_argument("--auth", metavar="DIR", help="CurveZMQ: this gateway's client keys")
    http.add_argument("--key", default="gateway", help="key pair name in --auth")
    http.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback bind without tokens, or router without auth",
    )
    http.add_argument(
        "--max-body", type=count, default=16 << 20, metavar="BYTES", help="default 16 MiB"
    )
    _log_flags(http)

    token = commands.add_parser("token", help="make a bearer token for squall http")
    token.add_argument("action", choices=["create"])
    token.add_argument("name", type=_key_name, metavar="NAME")
    token.add_argument("--out", required=True, metavar="DIR", help="the gateway's --tokens DIR")
    token.add_argument("--force", action="store_true", help="replace an existing token")

    commands.add_parser("demo", help="start the embedded default and run a few real tasks")
    return parser


def _operator_flags(commands: Any) -> None:
    """``squall status`` and ``squall inspect`` (squall/status.py)."""
    from squall.status import DEFAULT_INTERVAL, interval, task_id

    status = commands.add_parser(
        "status", help="show a router's workers, queues, totals and recent failures"
    )
    inspect = commands.add_parser("inspect", help="show one task: timeline, worker, error")
    inspect.add_argument("task_id", type=task_id, metavar="TASK_ID", help="the task's id")
    for command in (status, inspect):
        command.add_argument(
            "--connect", required=True, type=connect_address, metavar="ADDR", help="the router"
        )
        command.add_argument("--auth", metavar="DIR", help="CurveZMQ: this client's keys")
        command.add_argument("--key", default="client", help="key pair name in --auth")
        command.add_argument(
            "--insecure", action="store_true", help="allow a non-loopback router without auth"
        )
        command.add_argument("--json", action="store_true", help="the router's answer, as JSON")
    status.add_argument(
        "--watch", action="store_true", help="a live view (rich, on a terminal) until Ctrl-C"
    )
    status.add_argument(
        "--interval",
        type=interval,
        default=DEFAULT_INTERVAL,
        metavar="S",
        help=f"with --watch: seconds between views (default {DEFAULT_INTERVAL:g})",
    )


_KEYGEN: dict[str, Any] = {
    "help": "write CurveZMQ keys: the router's pair, or a client's or worker's in one step",
    "usage": "%(prog)s --out DIR (router | NAME | --client NAME [--operator] | --worker NAME "
    "[--group GROUP])"
    " [--force]",
    "formatter_class": argparse.RawDescriptionHelpFormatter,
    "description": """\
  squall keygen --out keys router                  the router's pair, keys/router.key(_secret)
  squall keygen --out keys --client alice          keys/clients/alice.key + keys/peers/alice/
  squall keygen --out keys --worker node1          keys/workers/node1.key + keys/peers/node1/
  squall keygen --out keys --worker node7 --group gpu   keys/workers/gpu/node7.key + ...
  squall keygen --out keys --client ops --operator keys/clients/operators/ops.key + ...

The router admits the public keys in keys/clients and keys/workers (a subfolder of workers is
a worker group; keys/clients/operators holds operators, clients who may also see and act on
the whole fleet). keys/peers/NAME/ holds router.key and NAME's pair: copy it to NAME's host,
then delete it here. squall keygen --out DIR NAME writes one bare pair.""",
}


def _keygen_flags(keygen: argparse.ArgumentParser) -> None:
    keygen.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="the router's auth directory (created mode 0700), or where a bare pair goes",
    )
    which = keygen.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "name", nargs="?", type=_key_name, help="router, or the name of a bare key pair"
    )
    which.add_argument(
        "--client", type=_key_name, metavar="NAME", help="a client's keys, allowed to submit"
    )
    which.add_argument(
        "--worker", type=_key_name, metavar="NAME", help="a worker node's keys, allowed to work"
    )
    keygen.add_argument(
        "--group",
        type=_key_name,
        metavar="GROUP",
        help="with --worker: put its key in the worker group GROUP (keys/workers/GROUP/)",
    )
    keygen.add_argument(
        "--operator",
        action="store_true",
        help="with --client: an operator's key (keys/clients/operators/), which may also see "
        "the fleet (squall status, the dashboard, /metrics) and cancel, retry and drain",
    )
    keygen.add_argument("--force", action="store_true", help="replace an existing key pair")


def _check_args(args: argparse.Namespace) -> None:
    """Checks argparse cannot express: flags that go together, and the environment.

    Raises:
        _BadUsage: one line naming the flag or variable.
    """
    from squall.log import LEVEL_ENV

    level = os.environ.get(LEVEL_ENV)
    if level and level.lower() not in _LEVELS and not getattr(args, "log_level", None):
        raise _BadUsage(f"{LEVEL_ENV}={level!r} is not a level: use {', '.join(_LEVELS)}")
    if args.command == "keygen" and args.group is not None and args.worker is None:
        raise _BadUsage("--group goes with --worker NAME: only workers form groups")
    if args.command == "keygen" and args.operator and args.client is None:
        raise _BadUsage("--operator goes with --client NAME: operators are clients")
    if args.command == "worker":
        try:  # here, not as its type: --connect must say what is wrong before anything starts
            connect_address(args.connect)
        except argparse.ArgumentTypeError as exc:
            raise _BadUsage(f"argument --connect: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check_args(args)
        if args.command == "router":
            return _router(args)
        if args.command == "worker":
            return _worker(args)
        if args.command == "keygen":
            return _keygen(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "schedules":
            return _schedules(args)
        if args.command == "status":
            return _status(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "http":
            return _http(args)
        if args.command == "token":
            return _token(args)
        return _demo()
    except _BadUsage as exc:
        sys.stderr.write(_usage_line(f"squall {args.command}", str(exc)))
        return 2
    except SquallError as exc:
        print(f"squall {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _log_args(args: argparse.Namespace) -> list[str]:
    out = ["--log-json"] if args.log_json else []
    return out + (["--log-level", args.log_level] if args.log_level else [])


def _router(args: argparse.Namespace) -> int:
    import zmq

    from squall import log
    from squall.config import check_listen_policy, is_loopback, validate_address
    from squall.router.server import RouterServer, forbid_unpickling

    address = validate_address(args.bind, bind=True)
    config = _router_config(address, args)
    check_listen_policy(address, args.auth, args.insecure)
    if config.metrics_bind and not (args.insecure or is_loopback(f"tcp://{config.metrics_bind}")):
        raise _BadUsage(
            f"refusing to serve metrics on {config.metrics_bind}: they name your queues and "
            "functions to anyone who reaches it; bind a loopback address, or pass --insecure"
        )
    log.configure(json=args.log_json, level=args.log_level, process="router")
    forbid_unpickling()
    server = RouterServer(config)
    try:
        endpoint = server.bind()
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot bind {address}: {exc}") from None
    logger = log.get_logger("squall.router")
    warning = _insecure_warning(address, args.auth)
    if warning:
        logger.warning(warning, endpoint=endpoint)
    logger.info(
        "router listening",
        unpickling="disabled",
        endpoint=endpoint,
        heartbeat=config.heartbeat,
        liveness=config.liveness,
    )
    server.serve_forever()
    return 0


def _router_config(address: str, args: argparse.Namespace) -> RouterConfig:
    """The router's settings from its flags and the environment.

    Raises:
        _BadUsage: a value, or a pair of them (``--liveness`` not above ``--heartbeat``), the
            router cannot run with.
    """
    from squall.config import RouterConfig

    try:
        return RouterConfig.from_env(
            address,
            heartbeat=args.heartbeat,
            liveness=args.liveness,
            parent_pid=args.parent_pid,
            insecure=args.insecure,
            max_worker_deaths=args.max_worker_deaths,
            max_queued=args.max_queued,
            max_message_size=args.max_message_size,
            max_client_bytes=args.max_client_bytes,
            max_held_bytes=args.max_held_bytes,
            max_recent_bytes=args.max_recent_bytes,
            max_body_size=args.max_body_size,
            max_backlog=args.max_backlog,
            max_backlog_bytes=args.max_backlog_bytes,
            auth=args.auth,
            data=args.data,
            fsync=args.fsync,
            result_ttl=args.result_ttl,
            max_kept_bytes=args.max_kept_bytes,
            queue_limits=tuple(args.limit),
            history=args.history,
            metrics_bind=args.metrics_bind,
        )
    except SquallError as exc:
        raise _BadUsage(str(exc)) from None


def _insecure_warning(address: str, auth: str | None) -> str | None:
    """What to shout when a router listens on TCP without keys (``--insecure``)."""
    from squall.config import is_loopback

    if auth or not address.startswith("tcp://"):
        return None
    if is_loopback(address):
        return (
            "listening WITHOUT authentication on loopback: ANY LOCAL USER can run code on "
            "every worker, as the user running it"
        )
    return (
        "listening WITHOUT authentication: anyone who can reach this address "
        "can run code on every worker"
    )


def _worker(args: argparse.Namespace) -> int:
    from squall import log
    from squall.config import WorkerConfig, is_loopback, validate_address
    from squall.runner.node import WorkerNode

    config = WorkerConfig.from_env(
        validate_address(args.connect),
        processes=args.processes,
        concurrency=args.concurrency,
        heartbeat=args.heartbeat,
        parent_pid=args.parent_pid,
        grace=args.grace,
        auth=args.auth,
        key=args.key,
        insecure=args.insecure,
        block_limit=args.block_limit,
        max_tasks_per_process=args.max_tasks_per_process,
        max_memory_per_process=args.max_memory_per_process,
        queues=args.queues,
        imports=tuple(args.imports),
    )
    if config.imports:  # refused at once, here, not by each worker process in turn
        from squall import functions

        functions.import_modules(config.imports)
    log.configure(json=args.log_json, level=args.log_level, process="worker-node")
    if not config.auth and not is_loopback(config.connect):
        log.get_logger("squall.worker").warning(
            "connecting WITHOUT authentication: whoever answers at this address can run any "
            "code on this worker",
            router=config.connect,
        )
    return WorkerNode(config, _log_args(args)).run()


def _http(args: argparse.Namespace) -> int:
    import asyncio

    from squall import log

    try:
        from squall.http.serve import HttpConfig, serve
    except ImportError as exc:
        raise ConfigError(
            f"squall http needs the http extra: pip install 'squall[http]' ({exc})"
        ) from None
    config = HttpConfig(
        connect=args.connect,
        bind=args.bind,
        tokens=args.tokens,
        webhook_secret=args.webhook_secret,
        hook_secret=args.hook_secret,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        auth=args.auth,
        key=args.key,
        insecure=args.insecure,
        max_body=args.max_body,
    )
    config.host_port()  # a bad --bind is refused before anything starts
    log.configure(json=args.log_json, level=args.log_level, process="gateway")
    asyncio.run(serve(config))
    return 0


def _token(args: argparse.Namespace) -> int:
    from squall.http import tokens

    secret = tokens.create(args.name, args.out, args.force)
    print(
        f"token {args.name!r} made in {args.out} (only its hash is kept); its secret, shown once:"
    )
    print(secret)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from squall import bench

    runs = 1 if args.quick else max(1, args.runs)
    figures = bench.run(args.connect, args.quick, runs, insecure=args.insecure)
    print(bench.table(figures, args.connect or "the embedded default"))
    return 0


def _status(args: argparse.Namespace) -> int:
    from squall.status import run_status

    return run_status(args)


def _inspect(args: argparse.Namespace) -> int:
    from squall.status import run_inspect

    return run_inspect(args)


def _schedules(args: argparse.Namespace) -> int:
    import dataclasses
    import datetime
    import json

    import squall

    with squall.Executor(
        args.connect, auth=args.auth, key=args.key, insecure=args.insecure, connect_timeout=10
    ) as ex:
        listed = ex.schedules()
    if args.json:
        for info in listed:
            print(json.dumps(dataclasses.asdict(info)))
        return 0

    def when(t: float | None) -> str:
        if t is None:
            return "-"
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S"
        )

    rows = [("NAME", "SPEC", "NEXT (UTC)", "LAST (UTC)", "LAST TASK", "PAUSED")]
    rows += [
        (
            i.name,
            i.spec,
            when(i.next_fire),
            when(i.last_fire),
            i.last_id or "-",
            "yes" if i.paused else "no",
        )
        for i in listed
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not listed:
        print("(no schedules)")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from squall.auth import CLIENT, WORKER, keygen, keygen_peer

    if args.name is not None:
        public, secret = keygen(args.out, args.name, force=args.force)
        print(f"wrote {public} (public: share it) and {secret} (secret, mode 0600: keep it)")
        return 0
    role, name = (CLIENT, args.client) if args.client is not None else (WORKER, args.worker)
    peer = keygen_peer(
        args.out, name, role, group=args.group, operator=args.operator, force=args.force
    )
    as_what = "an operator (a client that may see and act on the fleet)" if args.operator else role
    print(f"wrote {peer.allowed} (the router admits this key as {as_what})")
    print(
        f"wrote {peer.folder}{os.sep} (router.key, {name}.key, {name}.key_secret mode 0600): "
        f"copy it to {name}'s host, then delete it here"
    )
    if role == WORKER:
        print(f"on its host: squall worker --connect ADDR --auth {peer.folder} --key {name}")
    else:
        print(f'on its host: squall.Executor(ADDR, auth="{peer.folder}", key="{name}")')
    return 0


def _sleep_then_echo(x: Any) -> Any:
    time.sleep(0.1)
    return x


def _ticks(n: int, pause: float) -> Any:
    for i in range(n):
        yield i
        time.sleep(pause)


def _echo(x: Any) -> Any:
    return x


def _demo() -> int:
    """The README's main job: the embedded default doing a few real things, with figures."""
    import squall

    processes = os.cpu_count() or 1
    started = time.perf_counter()
    with squall.Executor(concurrency=10_000) as ex:
        print(
            f"squall {__version__}: embedded router + 1 worker node with {processes} gevent "
            f"processes, up in {time.perf_counter() - started:.2f} s"
        )

        greeting = "hello"

        def greet(name: str) -> str:  # a closure over a local variable
            return f"{greeting}, {name}, from worker pid {os.getpid()}"

        print(f"closure:  {ex.submit(greet, 'squall').result()}")
        print(f"lambda:   (lambda x: x * 2)(21) = {ex.submit(lambda x: x * 2, 21).result()}")
        try:
            ex.submit(lambda: 1 / 0).result()
        except ZeroDivisionError as exc:
            print(f"error:    ZeroDivisionError('{exc}') came back with its remote traceback")

        t0 = time.perf_counter()
        stream = ex.stream(_ticks, 5, 0.2)
        first = next(stream)
        first_ms = (time.perf_counter() - t0) * 1000
        rest = list(stream)
        print(
            f"stream:   value {first} after {first_ms:.0f} ms, then {rest} as the remote "
            f"generator yielded them, every 0.2 s"
        )

        parts = [ex.submit(_sleep_then_echo, i) for i in range(1, 11)]
        # futures as arguments: values go worker to worker (a type checker sees futures)
        total = ex.submit(sum, parts)  # type: ignore[call-overload]
        print(f"pipeline: sum of 10 tasks' results, computed remotely = {total.result()}")

        n = 10_000
        t0 = time.perf_counter()
        results = list(ex.map(_sleep_then_echo, range(n)))
        dt = time.perf_counter() - t0
        assert results == list(range(n))
        print(
            f"fan-out:  {n:,} tasks sleeping 0.1 s each in {dt:.2f} s ({n / dt:,.0f} tasks/s; "
            f"one at a time would take {n * 0.1:,.0f} s)"
        )

        n = 20_000
        t0 = time.perf_counter()
        results = list(ex.map(_echo, range(n)))
        dt = time.perf_counter() - t0
        assert results == list(range(n))
        print(f"no-op:    {n:,} tasks in {dt:.2f} s ({n / dt:,.0f} tasks/s end to end)")
    print("done: router and workers stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
