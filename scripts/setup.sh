#!/usr/bin/env bash
# One idempotent set-up for a fresh machine: a venv in .venv with every pinned dependency
# (requirements.txt: requirements/*.txt), this package's ROS interfaces built into it, and lisa_model / lisa_ros / training
# installed in editable mode. Re-running it only redoes what changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3

# The ROS interfaces are compiled here (scripts/build_interfaces.sh): cmake, a C++ compiler and the Python headers
# come from the system. Say so now rather than after minutes of pip.
missing=()
command -v cmake >/dev/null 2>&1 || missing+=("cmake")
command -v g++ >/dev/null 2>&1 || missing+=("g++")
"$py" -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  2>/dev/null || missing+=("Python headers (Python.h for $("$py" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo "$py"))")
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] missing from the system: ${missing[*]}" >&2
  echo "[setup] on Debian/Ubuntu: sudo apt install cmake g++ python3-dev python3-venv" >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$py" -m venv "$venv"
fi

stamp="$venv/.requirements.sha256"
want="$(sha256sum requirements.txt requirements/*.txt setup.py | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing pinned requirements (first time: a few minutes)"
  "$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e . 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$stamp"
fi

if [ -f scripts/build_interfaces.sh ]; then
  bash scripts/build_interfaces.sh
fi
echo "[setup] ready: $venv"
