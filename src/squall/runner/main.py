"""Worker process entry point: ``python -m squall.runner.main --config JSON`` (started by a node).

gevent's monkey-patching happens on the first lines, before anything else is imported, so that
``time.sleep``, sockets, ``urllib``, ``requests`` and database drivers inside tasks yield to the
other tasks instead of blocking the whole process. Library modules never patch; only this one.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from squall import log
    from squall.config import WorkerConfig
    from squall.runner import fatal, forks
    from squall.runner.executor import WorkerProcess

    parser = argparse.ArgumentParser(prog="squall-worker-process")
    parser.add_argument("--config", required=True, help="the node's WorkerConfig as JSON")
    parser.add_argument("--log-json", action="store_true", default=None)
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    log.configure(json=args.log_json, level=args.log_level, process="worker")
    config = WorkerConfig(**json.loads(args.config))
    forks.install()  # a task's fork() child ends with this process and never runs squall
    worker = WorkerProcess(config)
    fatal.install(config.status_fd, worker.blocking_task)  # a crash names the task to blame
    gevent.signal_handler(signal.SIGTERM, worker.stop, True)  # drain: finish, hand back the rest
    gevent.signal_handler(signal.SIGINT, worker.stop)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
