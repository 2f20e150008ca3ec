#!/usr/bin/env bash
# Runs the client's tests against a real squall stack (clients/harness.py).
set -euo pipefail
command -v node >/dev/null || { echo "test.sh: node is not installed" >&2; exit 1; }
cd "$(dirname "$0")" && node --test test/
