#!/usr/bin/env bash
# Builds the native training runtime (runtime/build: libmemwall.a, memwall-run, memwall-golden) once; returns in
# about a second when the build is up to date. Called by `./dev test` (MEMWALL_PYTHON = the venv's python) and by
# tests/test_runtime.py.
#
# Needs: a C++17 compiler, CMake >= 3.28 and ninja (installed from the Python package index into the venv:
# Debian bookworm's CMake 3.25 cannot use the executorch package's imported targets), nlohmann-json3-dev (Debian,
# header-only) and the executorch wheel (its lib/, include/ and share/cmake/executorch-config.cmake).
set -euo pipefail
# MEMWALL_PYTHON may be relative to the caller's directory (./dev passes .venv/bin/python): resolve it first.
PYTHON=${MEMWALL_PYTHON:-$(dirname "$0")/../.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
  echo "runtime/setup.sh: no python at $PYTHON; set MEMWALL_PYTHON to the project venv's python" >&2
  exit 1
fi
case "$PYTHON" in /*) ;; *) PYTHON="$PWD/$PYTHON" ;; esac
cd "$(dirname "$0")"
# One build at a time: ./dev runs this beside the apps' setup scripts, and their tests call it too.
exec 9>.setup.lock
flock 9
BIN=$(dirname "$PYTHON")

if ! "$BIN/cmake" --version 2>/dev/null | grep -qE 'version (3\.(2[89]|3[0-9])|[4-9])\.' || [ ! -x "$BIN/ninja" ]; then
  "$PYTHON" -m pip install --quiet --disable-pip-version-check 'cmake>=3.28' 'ninja>=1.11'
fi
if [ ! -f /usr/include/nlohmann/json.hpp ] && [ ! -f /usr/local/include/nlohmann/json.hpp ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nlohmann-json3-dev g++ >/dev/null
  else
    echo "runtime/setup.sh: install nlohmann-json3-dev (apt-get install nlohmann-json3-dev) and g++" >&2
    exit 1
  fi
fi
EXECUTORCH=$("$PYTHON" -c 'import executorch; print(list(executorch.__path__)[0])')
if [ ! -f build/build.ninja ] || [ "$(cat build/.executorch 2>/dev/null)" != "$EXECUTORCH" ]; then
  rm -rf build
  "$BIN/cmake" -S . -B build -G Ninja -DCMAKE_MAKE_PROGRAM="$BIN/ninja" -DCMAKE_PREFIX_PATH="$EXECUTORCH" -DCMAKE_BUILD_TYPE=Release
  echo "$EXECUTORCH" > build/.executorch
fi
"$BIN/ninja" -C build
