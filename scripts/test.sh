#!/usr/bin/env bash
# Every check: ruff, mypy, the canvas's TypeScript check and unit tests, then the whole pytest suite on
# real Postgres (127.0.0.1:5432 when it answers, else the embedded server), Chromium and JupyterHub.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check worker server_ext imagen_canvas tests bench notebooks
.venv/bin/mypy
(cd js && npm test)   # tsc --noEmit and the vitest unit tests of the canvas
.venv/bin/python -m pytest "$@"
