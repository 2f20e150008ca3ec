"""Worker process entry point: ``python -m squall.runner.main --config JSON`` (started by a node).

gevent's monkey-patching happens on the first lines, before anything else is imported, so that
``time.sleep``, sockets, ``urllib``, ``requests`` and database drivers inside tasks yield to the
other tasks instead of blocking the whole process. Library modules never patch; only this one.
"""

import os
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

import gevent.events
from gevent import monkey


class _PatchSslOnImport:
    """Patches :mod:`ssl` the moment it is first imported, not at boot.

    ``ssl`` with OpenSSL's libssl is 6 MB resident that a worker whose tasks never open a TLS
    connection does not need. gevent must patch ssl before any other module takes a name from
    it; patching right after ssl's own code runs, inside the import that asked for it, comes
    before the importer (``urllib3``, ``asyncio``...) reads a single name.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name != "ssl":
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec("ssl")
        if spec is None or spec.loader is None:  # no ssl in this Python: nothing to patch
            return spec
        exec_ssl = spec.loader.exec_module

        def exec_then_patch(module: ModuleType) -> None:
            exec_ssl(module)
            monkey.patch_ssl()

        spec.loader.exec_module = exec_then_patch  # type: ignore[method-assign]
        return spec


# gevent calls the plugins that installed packages declare (entry points) at each patch
# event, and finds them through importlib.metadata: a scan of every installed distribution
# and 2-6 MB resident (email, zipfile, csv...) in every worker process. squall's workers load
# no such plugin; SQUALL_GEVENT_PLUGINS=1 brings the lookup back.
if not os.environ.get("SQUALL_GEVENT_PLUGINS"):
    gevent.events.notify_and_call_entry_points = gevent.events.notify
if "ssl" in sys.modules:  # imported already (by a sitecustomize?): patch it now
    monkey.patch_all()
else:
    monkey.patch_all(ssl=False)
    sys.meta_path.insert(0, _PatchSslOnImport())

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402

import gevent  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from squall import log, tracing
    from squall.config import WorkerConfig
    from squall.runner import fatal, forks
    from squall.runner.executor import WorkerProcess

    parser = argparse.ArgumentParser(prog="squall-worker-process")
    parser.add_argument("--config", required=True, help="the node's WorkerConfig as JSON")
    parser.add_argument("--log-json", action="store_true", default=None)
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    log.configure(json=args.log_json, level=args.log_level, process="worker")
    log.add_context(tracing.log_context)  # a task's lines name it (and its caller's trace)
    config = WorkerConfig(**json.loads(args.config))
    forks.install()  # a task's fork() child ends with this process and never runs squall
    worker = WorkerProcess(config)
    fatal.install(config.status_fd, worker.blocking_task)  # a crash names the task to blame
    gevent.signal_handler(signal.SIGTERM, worker.stop, True)  # drain: finish, hand back the rest
    gevent.signal_handler(signal.SIGINT, worker.stop)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
