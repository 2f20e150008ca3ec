"""The Node.js, Go, PHP and Ruby clients (clients/<language>/), each tested in its own
language's runner against a real router, worker node and HTTP gateway (clients/harness.py).
A missing toolchain fails here: .ci/run installs them (Debian: golang-go, php-cli, ruby)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(400)

CLIENTS = Path(__file__).resolve().parent.parent / "clients"
TOOLCHAINS = {"node": "node", "go": "go", "php": "php", "ruby": "ruby"}
PACKAGES = {"node": "nodejs (18+)", "go": "golang-go", "php": "php-cli", "ruby": "ruby"}


@pytest.mark.parametrize("language", sorted(TOOLCHAINS))
def test_the_client_passes_its_own_tests_against_a_real_stack(language: str) -> None:
    tool = TOOLCHAINS[language]
    assert shutil.which(tool), (
        f"{tool} is not installed: the {language} client cannot be tested "
        f"(Debian: apt-get install {PACKAGES[language]}, as .ci/run does)"
    )
    env = {**os.environ, "PYTHON": sys.executable, "GOFLAGS": "-mod=mod", "GOPROXY": "off"}
    ran = subprocess.run(
        ["bash", str(CLIENTS / language / "test.sh")],
        capture_output=True,
        text=True,
        timeout=360,
        env=env,
    )
    assert ran.returncode == 0, f"{language} client tests failed:\n{ran.stdout}\n{ran.stderr}"
