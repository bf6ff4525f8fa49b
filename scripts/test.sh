#!/usr/bin/env bash
# Every check: ruff, mypy, then the whole pytest suite on real Postgres (127.0.0.1:5432 when it
# answers, else the embedded server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
