#!/usr/bin/env bash
# The main job: lisa_node (offline tiny model, or MODEL=<checkpoint folder or hub id>) on a demo ScanNet-style
# scene played over DDS; one ReasonSegment call "where would I put the clothes"; the overlay PNG, masks and a
# JSON (answer, 3D targets) written to out/demo/, and the answer printed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="$root/.venv/bin/python"
model="${MODEL:-tiny-random}"
out="$root/out/demo"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}" ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# Camera-sized frames through shared memory (Fast DDS's default segment is smaller than one 640x480 frame).
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$root/config/fastdds_large_data.xml}"
mkdir -p "$out"
[ -d "$out/scene" ] || "$py" -m lisa_ros.scenes.synthetic "$out/scene" --frames 10 >/dev/null

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
"$py" -m lisa_ros.node --ros-args -p model:="$model" -p continuous_rate:=0.0 >"$out/node.log" 2>&1 &
pids+=($!)
"$py" -m lisa_ros.scene_player --scene "$out/scene" --rate 5 --loop >"$out/player.log" 2>&1 &
pids+=($!)
"$py" -m lisa_ros.client "where would I put the clothes" --out "$out" --timeout 300
