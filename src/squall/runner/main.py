"""Worker process entry point: ``python -m squall.runner.main --connect ADDR ...``.

gevent's monkey-patching happens on the first lines, before anything else is imported, so that
``time.sleep``, sockets, ``urllib``, ``requests`` and database drivers inside tasks yield to the
other tasks instead of blocking the whole process. Library modules never patch; only this one.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from squall import log
    from squall.config import WorkerConfig
    from squall.runner.executor import WorkerProcess

    parser = argparse.ArgumentParser(prog="squall-worker-process")
    parser.add_argument("--connect", required=True)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--heartbeat", type=float)
    parser.add_argument("--grace", type=float)
    parser.add_argument("--auth")
    parser.add_argument("--key")
    parser.add_argument("--log-json", action="store_true", default=None)
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    log.configure(json=args.log_json, level=args.log_level, process="worker")
    config = WorkerConfig.from_env(
        args.connect,
        processes=1,
        concurrency=args.concurrency,
        parent_pid=args.parent_pid,
        heartbeat=args.heartbeat,
        grace=args.grace,
        auth=args.auth,
        key=args.key,
    )
    worker = WorkerProcess(config)
    gevent.signal_handler(signal.SIGTERM, worker.stop, True)  # drain: finish, hand back the rest
    gevent.signal_handler(signal.SIGINT, worker.stop)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
