"""map(progress=True) draws in a notebook too, and squall's lazy names complete (#12 item 15)."""

from __future__ import annotations

import sys
import types

import pytest
import tqdm
import tqdm.auto

import squall
from squall.client.executor import progress_bar

pytestmark = pytest.mark.timeout(30)


def _fake_ipython(kernel: bool) -> types.ModuleType:
    module = types.ModuleType("IPython")
    shell = types.SimpleNamespace(config={"IPKernelApp": {}} if kernel else {})
    module.get_ipython = lambda: shell  # type: ignore[attr-defined]
    return module


def test_a_notebook_kernel_gets_the_notebook_aware_bar(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "IPython", _fake_ipython(kernel=True))
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    with progress_bar(3) as bar:
        assert type(bar) is tqdm.auto.tqdm and not bar.disable


def test_a_plain_ipython_or_a_pipe_stays_silent(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "IPython", _fake_ipython(kernel=False))
    with progress_bar(3) as bar:  # pytest captures stderr: no terminal
        assert type(bar) is tqdm.tqdm and bar.disable
    monkeypatch.delitem(sys.modules, "IPython")
    with progress_bar(3) as bar:
        assert bar.disable


def test_dir_lists_the_lazy_names() -> None:
    names = dir(squall)
    for name in ("Executor", "AsyncExecutor", "Future", "Stream", "as_completed", "SquallError"):
        assert name in names
