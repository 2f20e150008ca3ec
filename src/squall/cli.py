"""The ``squall`` command: ``router``, ``worker``, ``demo`` and ``--version``.

Every failure a user can cause (a bad flag, an address that cannot be bound, an unsafe bind) ends
in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Any, NoReturn

from squall._version import __version__
from squall.errors import SquallError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _log_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-json",
        action="store_true",
        default=None,
        help="log one JSON object per line (env SQUALL_LOG_JSON=1)",
    )
    parser.add_argument("--log-level", help="debug, info, warning or error (env SQUALL_LOG_LEVEL)")


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def byte_size(text: str) -> int:
    """``1048576``, ``64MiB``, ``64M`` or ``1g``: a size in bytes (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use e.g. 1048576, 64MiB, 2GiB")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="squall", description="Run Python callables on gevent workers.")
    parser.add_argument("--version", action="version", version=f"squall {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    router = commands.add_parser("router", help="run a router that clients and workers connect to")
    router.add_argument(
        "--bind",
        required=True,
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
    router.add_argument("--heartbeat", type=float, help="seconds between heartbeats (default 1)")
    router.add_argument(
        "--liveness",
        type=float,
        help="seconds of silence before a worker is declared dead (default 3)",
    )
    router.add_argument(
        "--max-worker-deaths",
        type=int,
        help="a task whose worker dies this often fails with WorkerLost (default 3)",
    )
    router.add_argument(
        "--max-queued",
        type=int,
        help="tasks one client may have queued in the router (default 1,000,000)",
    )
    router.add_argument(
        "--max-message-size",
        type=byte_size,
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
        router.add_argument(flag, type=byte_size, metavar="BYTES", help=text)
    router.add_argument(
        "--max-backlog",
        type=int,
        metavar="N",
        help="messages waiting for one slow peer before it is cut off (default 10,000)",
    )
    router.add_argument(
        "--auth",
        metavar="DIR",
        help="CurveZMQ: DIR/router.key_secret, allowed keys in DIR/clients and DIR/workers "
        "(SIGHUP reloads them)",
    )
    router.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
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
    worker.add_argument("--heartbeat", type=float, help="seconds between heartbeats (default 1)")
    worker.add_argument(
        "--grace", type=float, help="on SIGTERM, seconds running tasks get to finish (default 30)"
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

    keygen = commands.add_parser("keygen", help="write a CurveZMQ key pair")
    keygen.add_argument("--out", required=True, metavar="DIR")
    keygen.add_argument("name", help="router, or a client's or worker's name")
    keygen.add_argument("--force", action="store_true", help="replace an existing key pair")

    bench = commands.add_parser("bench", help="measure squall here (under a minute)")
    bench.add_argument("--connect", metavar="ADDR", help="a running router (default: embedded)")
    bench.add_argument("--quick", action="store_true", help="smaller workloads, one run")
    bench.add_argument("--runs", type=int, default=3, help="measured runs (default 3)")
    bench.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback router without auth"
    )

    commands.add_parser("demo", help="start the embedded default and run a few real tasks")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "router":
            return _router(args)
        if args.command == "worker":
            return _worker(args)
        if args.command == "keygen":
            return _keygen(args)
        if args.command == "bench":
            return _bench(args)
        return _demo()
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
    from squall.config import RouterConfig, check_listen_policy, validate_address
    from squall.router.server import RouterServer, forbid_unpickling

    address = validate_address(args.bind)
    check_listen_policy(address, args.auth, args.insecure)
    log.configure(json=args.log_json, level=args.log_level, process="router")
    forbid_unpickling()
    config = RouterConfig.from_env(
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
    )
    server = RouterServer(config)
    try:
        endpoint = server.bind()
    except zmq.ZMQError as exc:
        raise SquallError(f"cannot bind {address}: {exc}") from None
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
    )
    log.configure(json=args.log_json, level=args.log_level, process="worker-node")
    if not config.auth and not is_loopback(config.connect):
        log.get_logger("squall.worker").warning(
            "connecting WITHOUT authentication: whoever answers at this address can run any "
            "code on this worker",
            router=config.connect,
        )
    return WorkerNode(config, _log_args(args)).run()


def _bench(args: argparse.Namespace) -> int:
    from squall import bench

    runs = 1 if args.quick else max(1, args.runs)
    figures = bench.run(args.connect, args.quick, runs, insecure=args.insecure)
    print(bench.table(figures, args.connect or "the embedded default"))
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from squall.auth import keygen

    public, secret = keygen(args.out, args.name, force=args.force)
    print(f"wrote {public} (public: share it) and {secret} (secret, mode 0600: keep it)")
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
        total = ex.submit(sum, parts)  # futures as arguments: values go worker to worker
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
