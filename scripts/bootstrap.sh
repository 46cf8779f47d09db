#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv and system packages. Idempotent and quiet when
# nothing changed: the venv is rebuilt only when a requirements file changes.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.requirements.sha256"
want=$(cat requirements/*.txt services/*/requirements.txt libs/*/pyproject.toml | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing Python packages into $VENV (first run: about 2 minutes)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet -r requirements/dev.txt
  # The serving API's wheel would pull the full `tensorflow` wheel beside tensorflow-cpu.
  "$VENV/bin/pip" install --quiet --no-deps tensorflow-serving-api==2.21.0
  # The project's own libraries, editable so that the tree is what runs.
  for lib in libs/*/; do "$VENV/bin/pip" install --quiet --no-deps -e "$lib"; done
  echo "$want" > "$stamp"
fi
