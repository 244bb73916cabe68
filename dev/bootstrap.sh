#!/usr/bin/env bash
# Creates .venv with a Python >= 3.11 and installs ClipGuard with its dev tools
# (pyproject.toml pins the PyAV that each interpreter needs: 18.1 on 3.11, 19 on 3.12+).
# The interpreter is $PYTHON when set, else the first of python3, python3.13, python3.12,
# python3.11 on PATH that is >= 3.11.
# Re-running is cheap: it reinstalls only when pyproject.toml changed, and it recreates .venv
# when the interpreter inside it is older than 3.11 or no longer runs.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed
ok_version='import sys; sys.exit(sys.version_info < (3, 11))'

if [ -e .venv ] && ! .venv/bin/python -c "$ok_version" 2>/dev/null; then
  echo "bootstrap: .venv has no working Python >= 3.11; recreating it" >&2
  rm -rf .venv
fi
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi

find_python() {
  local candidates=(python3 python3.13 python3.12 python3.11) candidate found=""
  if [ -n "${PYTHON:-}" ]; then candidates=("$PYTHON"); fi
  for candidate in "${candidates[@]}"; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c "$ok_version" 2>/dev/null; then
      echo "$candidate"; return 0
    fi
    found+=" $candidate ($("$candidate" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "does not run"))"
  done
  {
    echo "bootstrap: ClipGuard needs Python >= 3.11; tried ${candidates[*]}${found:+, found:$found}."
    echo "Install Python 3.11 or newer (Debian 12: apt-get install python3 python3-venv),"
    echo "or point PYTHON at one: PYTHON=/path/to/python3.11 make run"
  } >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  python=$(find_python)
  if ! "$python" -m venv .venv; then
    rm -rf .venv
    echo "bootstrap: '$python -m venv' failed (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
touch "$stamp"
