#!/usr/bin/env bash
# Runs the PHP client's tests against a real squall stack (clients/harness.py).
# PYTHON picks the interpreter with squall installed (default: the repository's .venv).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v php >/dev/null 2>&1; then
    echo "test.sh: php is not installed (PHP >= 8.1 CLI is needed)" >&2
    exit 1
fi
exec php tests/ClientTest.php "$@"
