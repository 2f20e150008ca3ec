"""submit, stream and map are typed as the standard library types Executor.submit (#12
item 18): mypy, run over a small user script, flags arguments that do not fit the function."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

SCRIPT = textwrap.dedent("""
    from collections.abc import Iterator

    import squall


    def double(x: int) -> int:
        return 2 * x


    def count(n: int) -> Iterator[int]:
        yield from range(n)


    def good(ex: squall.Executor, aex: squall.AsyncExecutor) -> None:
        value: int = ex.submit(double, 21).result()
        named: int = ex.submit(double, x=21).result()
        items: list[int] = list(ex.stream(count, 3))
        mapped: list[int] = list(ex.map(double, [1, 2]))
        awaited: squall.Future[int] = aex.submit(double, 1)
        by_name: squall.Future[object] = ex.submit("math.add", 1, 2)  # a call by name
        awaited_by_name: squall.Future[object] = aex.submit("math.add", 1, 2)
        print(value, named, items, mapped, awaited, by_name, awaited_by_name)


    def bad(ex: squall.Executor, aex: squall.AsyncExecutor) -> None:
        ex.submit(double, "x")  # BAD
        ex.submit(double)  # BAD
        ex.submit(double, 1, 2)  # BAD
        ex.stream(count, "3")  # BAD
        aex.submit(double, "x")  # BAD
        text: str = ex.submit(double, 1).result()  # BAD
""")


def test_mypy_flags_arguments_that_do_not_fit(tmp_path: Path) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    ran = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=200,
    )
    flagged = {int(line.split(":")[1]) for line in ran.stdout.splitlines() if ": error:" in line}
    lines = SCRIPT.splitlines()
    expected = {n for n, line in enumerate(lines, 1) if line.endswith("# BAD")}
    assert flagged == expected, ran.stdout + ran.stderr
