#!/usr/bin/env bash
# Creates .venv with the three packages editable and the dev tools. Idempotent: reinstalls only when
# a pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.imagen-installed
if [ ! -f "$stamp" ] || [ -n "$(find pyproject.toml worker/pyproject.toml server_ext/pyproject.toml -newer "$stamp")" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "./worker[all]" -e ./server_ext -e ".[dev]" "jupyterlab>=4.2,<5"
  touch "$stamp"
fi
# configurable-http-proxy (npm) for the JupyterHub tests and a hub on this machine.
if [ ! -x .venv/chp/node_modules/.bin/configurable-http-proxy ]; then
  mkdir -p .venv/chp
  npm install --prefix .venv/chp --no-audit --no-fund --loglevel=error configurable-http-proxy@5 >/dev/null
fi
