#!/usr/bin/env bash
# Vets and tests the Go client against a real squall stack (clients/harness.py).
# PYTHON may name the Python that has squall (default: ../../.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")"
command -v go >/dev/null || { echo "test.sh: go is not installed" >&2; exit 1; }
go vet ./... && go test -count=1 ./...
