#!/usr/bin/env bash
# The main job: JupyterLab with imagen-canvas on the embedded defaults (embedded Postgres, local
# store, offline provider), opening notebooks/quickstart.ipynb; it prints the URL to open (with its
# token). Set IMAGEN_DATABASE_URL / IMAGEN_STORAGE to use your own.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
root=()
[ "$(id -u)" = 0 ] && root=(--allow-root)
exec .venv/bin/jupyter lab --ip 127.0.0.1 --no-browser "${root[@]}" --ServerApp.root_dir=notebooks \
  --LabApp.default_url=/lab/tree/quickstart.ipynb "$@"
