#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv and system packages. Idempotent and quiet when
# nothing changed: the venv is rebuilt only when a requirements file changes.
#   scripts/bootstrap.sh              what the stack needs (./stack up)
#   scripts/bootstrap.sh --for-tests  and what the test suite needs besides (./stack test)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.requirements.sha256"
want=$(cat requirements/*.txt services/*/requirements.txt libs/*/pyproject.toml client/pyproject.toml \
  | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing Python packages into $VENV (first run: about 2 minutes)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet -r requirements/dev.txt
  "$VENV/bin/pip" install --quiet --no-deps -r requirements/model-server-no-deps.txt
  # The project's own libraries, editable so that the tree is what runs.
  for lib in libs/*/ client/; do "$VENV/bin/pip" install --quiet --no-deps -e "$lib"; done
  echo "$want" > "$stamp"
fi

# Debian packages: nginx for local mode, wrk for the benchmark; for the tests, chromium, its
# driver and a CJK font (the demo page's browser test). nginx is installed without starting its system service:
# the stack runs its own nginx with its own config, and nothing should be left listening on :80.
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "${1:-}" = --for-tests ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  [ -d /usr/share/fonts/truetype/wqy ] || missing+=(fonts-wqy-microhei)  # Chinese text in screenshots
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing ${missing[*]} (Debian packages)"
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing ${missing[*]}; install them (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2
    [[ " ${missing[*]} " == *" nginx "* ]] && exit 1  # the stack needs nginx; the rest is for bench and tests
  fi
fi
