#!/usr/bin/env bash
# The main job on this machine: the offline tiny model (or MODEL=<checkpoint>) answers one instruction about a
# demo image and writes what it saw to out/demo/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
model="${MODEL:-tiny-random}"
.venv/bin/lisa-segment --model "$model" --out out/demo \
  test/fixtures/lisa_tiny_reference/cases/case1_640x480/image.png "where would I put the clothes"
