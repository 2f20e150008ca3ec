"""The README's two quick-start commands work, as written, in a fresh clone."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(900)


def readme_commands() -> tuple[str, str]:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    demo = next(b.strip() for b in blocks if "squall demo" in b)
    tests = next(b.strip() for b in blocks if "pytest" in b)
    return demo, tests


def test_quickstart_in_a_fresh_clone(tmp_path: Path) -> None:
    if os.environ.get("SQUALL_INNER_QUICKSTART"):
        pytest.skip("already inside the quick-start check")
    demo, tests = readme_commands()
    clone = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(ROOT))
    )

    ran = subprocess.run(
        demo, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "closure:" in ran.stdout and "tasks/s" in ran.stdout, ran.stdout

    # The test command as written, narrowed to one quick module so it does not recurse.
    env["SQUALL_INNER_QUICKSTART"] = "1"
    env["PYTEST_ADDOPTS"] = "-p no:cacheprovider tests/test_end_to_end.py -k every_kind"
    ran = subprocess.run(
        tests, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert re.search(r"\b1 passed\b", ran.stdout), ran.stdout
