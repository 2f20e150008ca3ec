"""Worker process entry point: ``python -m squall.runner.main --config JSON`` (started by a node).

gevent's monkey-patching happens on the first lines, before anything else is imported, so that
``time.sleep``, sockets, ``urllib``, ``requests`` and database drivers inside tasks yield to the
other tasks instead of blocking the whole process. Library modules never patch; only this one.
"""

import os

import gevent.events
from gevent import monkey

# gevent calls the plugins that installed packages declare (entry points) at each patch
# event, and finds them through importlib.metadata: a scan of every installed distribution
# and 2-6 MB resident (email, zipfile, csv...) in every worker process. squall's workers load
# no such plugin; SQUALL_GEVENT_PLUGINS=1 brings the lookup back.
if not os.environ.get("SQUALL_GEVENT_PLUGINS"):
    gevent.events.notify_and_call_entry_points = gevent.events.notify
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
