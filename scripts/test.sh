#!/usr/bin/env bash
# The one way to run the whole test suite, locally and in CI.
set -euo pipefail
VENV="${1:-.venv}"
"$VENV/bin/ruff" check controller sim tests bench
"$VENV/bin/mypy"
exec "$VENV/bin/pytest" "${@:2}"
