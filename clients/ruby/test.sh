#!/usr/bin/env bash
# Runs the Ruby client's tests against a real squall stack (clients/harness.py).
# PYTHON picks the interpreter that has squall (default: the repository's .venv).
set -euo pipefail
command -v ruby >/dev/null || { echo "test.sh: ruby is not installed" >&2; exit 1; }
cd "$(dirname "$0")" && ruby -Ilib -Itest test/client_test.rb "$@"
