#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv and system packages. Idempotent and quiet when
# nothing changed: third-party packages are reinstalled only when what the requirement files ask
# for changes, this tree's own projects only when one of them (or the tree's place) changes.
#   scripts/bootstrap.sh              what the stack needs (./stack up)
#   scripts/bootstrap.sh --for-tests  and what the test suite needs besides (./stack test)
#   scripts/bootstrap.sh --peers      only the benchmark's peers' venv (bench.peers, on first use)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
mode=${1:-}
# The repository's own projects: libraries, client, model server, and the tools at the root. The API
# services are not among them: a service is its roster entry's folder (below).
projects=$(dirname libs/*/pyproject.toml client/pyproject.toml tfserving/pyproject.toml pyproject.toml)
# requirements/perf-analyzer.txt and peers.txt are left out: each is installed apart, with a stamp of its own (below).
venv_requirements=()
for file in requirements/*.txt; do
  case "$file" in requirements/perf-analyzer.txt|requirements/peers.txt) ;; *) venv_requirements+=("$file") ;; esac
done

# The peers bench.peers measures the stack against (LitServe, BentoML) in a venv of their own, .venv-peers:
# they pin web frameworks of their own, and the model runs in their processes (TensorFlow). Pinned in
# requirements/peers.txt; made again only when it changes.
install_peers() {
  local venv=.venv-peers want
  want=$(sha256sum requirements/peers.txt | cut -d' ' -f1)
  [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ] || return 0
  echo "bootstrap: installing the benchmark's peers (LitServe, BentoML) into $venv (first run: about 2 minutes)"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -r requirements/peers.txt
  # The peer apps (bench.peer_apps) and the segmentation they share with text-api, editable from this
  # tree, without their dependencies (the pins above are the peers' own).
  "$venv/bin/python" -m pip install --quiet --no-deps -e . -e libs/model_preprocessing
  echo "$want" > "$venv/.requirements.sha256"
}
if [ "$mode" = --peers ]; then
  install_peers
  exit 0
fi
# Third-party packages: the requirement lines as a set, so a new service whose requirements.txt says only
# `-r ../api-requirements.txt` (a file counted here already) asks for nothing new.
requirements_stamp="$VENV/.requirements.sha256"
requirements_want=$(cat "${venv_requirements[@]}" services/*requirements.txt services/*/requirements.txt \
  | sed -E 's/(^|[[:space:]])#.*//; s/[[:space:]]+$//; /^$/d; /^-r /d' | sort -u | sha256sum | cut -d' ' -f1)
# This tree's projects: editable installs record the tree's absolute place.
projects_stamp="$VENV/.projects.sha256"
# shellcheck disable=SC2086 # one word per project
projects_want=$( (echo "$PWD"; for p in $projects; do echo "$p"; cat "$p/pyproject.toml"; done) | sha256sum | cut -d' ' -f1)

# Debian packages compose v2 (the Go plugin, `docker compose`) and a kubectl with kustomize v5 from
# trixie on; their binaries need only libc >= 2.34, so they install on bookworm too. The suite is
# added from this machine's own mirror, pinned low so that nothing else is taken from it (the file
# keeps its first name, compose-v2.sources, so machines that have it do not get it twice).
NEWER_SUITE=trixie
add_newer_suite() {
  local mirror
  mirror=$(. /etc/os-release && apt-get indextargets --format '$(REPO_URI)' "Codename: $VERSION_CODENAME" \
    "Target-Of: deb" | head -n 1)
  [ -n "$mirror" ] || { echo "bootstrap: no Debian mirror in this machine's apt sources" >&2; return 1; }
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' "$mirror" "$NEWER_SUITE" \
    /usr/share/keyrings/debian-archive-keyring.gpg > /etc/apt/sources.list.d/compose-v2.sources
  printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n' "$NEWER_SUITE" \
    > /etc/apt/preferences.d/compose-v2
  apt-get update -qq >/dev/null
}

# Debian packages: nginx for local mode, wrk for the benchmark; for the tests, chromium, its
# driver and a CJK font (the demo page's browser test). nginx is installed without starting its system service:
# the stack runs its own nginx with its own config, and nothing should be left listening on :80.
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
# A compiler and Python's headers: gunicorn_h1c (gunicorn's C HTTP parser) comes as source only.
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
[ -f "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || missing+=(python3-dev)
if [ "$mode" = --for-tests ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  [ -d /usr/share/fonts/truetype/wqy ] || missing+=(fonts-wqy-microhei)  # Chinese text in screenshots
  # The live compose tier: a Docker engine, compose v2, and debootstrap for stand-in base images
  # where no image registry can be reached (tests/compose/stand_in_images.py).
  command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
  docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
  # The live swarm tier (tests/swarm): the registry its hosts pull from, and skopeo to push there
  # from this machine's engine whatever registries that engine trusts.
  command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
  command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
  # Triton's perf_analyzer (below) links libb64.so.0d.
  /sbin/ldconfig -p 2>/dev/null | grep 'libb64\.so\.0d ' >/dev/null || missing+=(libb64-0d)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing ${missing[*]} (Debian packages)"
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq >/dev/null
    # Packages whose bookworm version is too old come from the newer suite (pinned low: only these).
    if [[ " ${missing[*]} " == *" docker-compose "* ]] && ! apt-cache policy docker-compose | grep -q 'Candidate: 2\.'; then
      [ -f /etc/apt/sources.list.d/compose-v2.sources ] || add_newer_suite
      missing=("${missing[@]/#docker-compose/docker-compose/$NEWER_SUITE}")
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing ${missing[*]}; install them (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2
    # the stack needs nginx and the compiler; the rest is for bench and tests
    [[ " ${missing[*]} " =~ " "(nginx|gcc|python3-dev)" " ]] && exit 1
  fi
fi

# Python packages, after the Debian ones: gunicorn's C parser (gunicorn_h1c) is built from source.
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$requirements_stamp" 2>/dev/null)" != "$requirements_want" ]; then
  echo "bootstrap: installing Python packages into $VENV (first run: about 2 minutes)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # Every service's runtime packages with the tools: one resolution, so their pins must agree; and the
  # projects' build backend (setuptools 70.1 on builds wheels without the `wheel` package).
  service_requirements=()
  for file in services/*/requirements.txt; do service_requirements+=(-r "$file"); done
  "$VENV/bin/python" -m pip install --quiet -r requirements/dev.txt "${service_requirements[@]}" "setuptools>=70.1"
  "$VENV/bin/python" -m pip install --quiet --no-deps -r requirements/model-server-no-deps.txt
  echo "$requirements_want" > "$requirements_stamp"
fi
# The projects, editable so that the tree is what runs (no PYTHONPATH anywhere), and every roster service
# (services/<name>/service.toml): its folder goes on the venv's path through one .pth file, rewritten on
# every run, so a service added by the README's steps is importable with no packaging of its own (gunicorn
# imports it from its folder the same way, and its image from /app). Editable installs of this tree that
# are no longer projects (the services were, once) are removed. One pip call, built without an isolated
# environment per project (setuptools is in the venv, above): 5 s instead of 30.
site_packages=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
for file in services/*/service.toml; do
  [ ! -f "$file" ] || echo "$PWD/${file%/service.toml}"
done > "$site_packages/model-serving-services.pth.new"
mv "$site_packages/model-serving-services.pth.new" "$site_packages/model-serving-services.pth"
if [ "$(cat "$projects_stamp" 2>/dev/null)" != "$projects_want" ]; then
  echo "bootstrap: installing this tree's projects into $VENV"
  # shellcheck disable=SC2086
  stale=$("$VENV/bin/python" -m pip list --editable --path "$site_packages" --format json | "$VENV/bin/python" -c '
import json, os, sys
root, projects = os.getcwd(), {os.path.abspath(p) for p in sys.argv[1:]}
print(*(d["name"] for d in json.load(sys.stdin) if d["editable_project_location"] not in projects
        and os.path.commonpath([root, d["editable_project_location"]]) == root))' $projects)
  # shellcheck disable=SC2086
  [ -z "$stale" ] || "$VENV/bin/python" -m pip uninstall --quiet --yes $stale
  # shellcheck disable=SC2046,SC2086
  "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation $(printf -- '-e %s ' $projects)
  echo "$projects_want" > "$projects_stamp"
fi

# Triton's perf_analyzer for bench/perf_analyzer.py and its test: the binary shipped in the tritonclient
# wheel and the libcudart.so.12 it links (nvidia-cuda-runtime-cu12; no GPU is used), pinned in
# requirements/perf-analyzer.txt and installed with --no-deps into a folder of their own, off the venv's
# sys.path (tritonclient's Python package would want cuda-python and protobuf<4; only the binary is used).
# $VENV/bin/perf_analyzer runs it with LD_LIBRARY_PATH set. Reinstalled only when its pins change.
perf_analyzer_dir="$VENV/perf_analyzer"
perf_analyzer_want=$(sha256sum requirements/perf-analyzer.txt | cut -d' ' -f1)
if [ "$mode" = --for-tests ] && [ "$(cat "$perf_analyzer_dir/.requirements.sha256" 2>/dev/null)" != "$perf_analyzer_want" ]; then
  echo "bootstrap: installing perf_analyzer into $perf_analyzer_dir"
  rm -rf "$perf_analyzer_dir"
  "$VENV/bin/python" -m pip install --quiet --no-deps --target "$perf_analyzer_dir" -r requirements/perf-analyzer.txt
  printf '%s\n' '#!/bin/sh' '# Written by scripts/bootstrap.sh: Triton'"'"'s perf_analyzer with the libcudart.so.12 it links.' \
    'dir=$(dirname "$(readlink -f "$0")")/../perf_analyzer' \
    'LD_LIBRARY_PATH="$dir/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$dir/bin/perf_analyzer" "$@"' \
    > "$VENV/bin/perf_analyzer"
  chmod +x "$VENV/bin/perf_analyzer" "$perf_analyzer_dir/bin/perf_analyzer"
  echo "$perf_analyzer_want" > "$perf_analyzer_dir/.requirements.sha256"
fi

[ "$mode" != --for-tests ] || install_peers

# `kubectl kustomize` with kustomize v5 builds k8s/ in its tests: Debian's kubectl, from trixie (bookworm's
# kubernetes-client 1.20 has kustomize v2). On its own, and not fatal: a kubectl from elsewhere may be in the way.
if [ "$mode" = --for-tests ] && ! kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v5' \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: installing kubectl (Debian $NEWER_SUITE)"
  if [ -f /etc/apt/sources.list.d/compose-v2.sources ]; then apt-get update -qq >/dev/null; else add_newer_suite; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "kubectl/$NEWER_SUITE" \
    >/dev/null || echo "bootstrap: kubectl did not install (another one in the way?); tests/k8s need kustomize v5" >&2
fi
