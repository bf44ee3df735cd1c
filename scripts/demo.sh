#!/usr/bin/env bash
# The main job: lisa_node with the built-in demo model (lisa-demo, or MODEL=<checkpoint folder or hub id>) on a
# household scene (ScanNet layout, colour + depth) played over DDS as a standing robot's camera; one ReasonSegment
# call "where would I put the clothes"; the overlay PNG, masks and a JSON (answer, 3D targets) written to out/demo/
# (or OUT=<folder>), and the answer and the target's 3D centroid printed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="$root/.venv/bin/python"
model="${MODEL:-lisa-demo}"
out="${OUT:-$root/out/demo}"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}" ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# Camera-sized frames through shared memory (Fast DDS's default segment is smaller than one 640x480 frame).
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$root/config/fastdds_large_data.xml}"
mkdir -p "$out"
# seed 3: a basket, a chair, a table with a mug, a bin, a plant and a shelf, all in view
[ -d "$out/household_scene" ] || "$py" -m lisa_ros.scenes.household "$out/household_scene" --frames 1 --seed 3 >/dev/null

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
"$py" -m lisa_ros.node --ros-args -p model:="$model" -p continuous_rate:=0.0 >"$out/node.log" 2>&1 &
pids+=($!)
"$py" -m lisa_ros.scene_player --scene "$out/household_scene" --rate 5 --loop >"$out/player.log" 2>&1 &
pids+=($!)
"$py" -m lisa_ros.client "where would I put the clothes" --out "$out" --timeout 300 --wait-for-3d
