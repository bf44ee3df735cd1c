"""bench_node.py's robot-load sections: prefetch, a long soak, hostile requests. Each returns markdown lines.

Imported by bench/bench_node.py (`--prefetch`, `--soak N`, `--hostile`); not a script of its own.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image

from lisa_ros.srv import ReasonSegment

SRV = "/lisa_node/reason_segment"


def call(peer, instruction: str, image: Image | None = None, tokens: int = 16, timeout: float = 900.0):
    """(response, round-trip seconds); never raises on success=false."""
    req = ReasonSegment.Request(instruction=instruction, max_new_tokens=tokens)
    if image is not None:
        req.image = image
    t0 = time.perf_counter()
    res = peer.call(ReasonSegment, SRV, req, timeout)
    return res, time.perf_counter() - t0


def variant(rgb: np.ndarray, k: int) -> np.ndarray:
    """The demo frame as the k-th frame of a camera panning right: a new image every time (new features)."""
    return np.roll(rgb, k, axis=1)


def prefetch_section(peer, rgb: np.ndarray, frame_message, repeats: int, tokens: int) -> list[str]:
    """Node started with prefetch:=true. Per round: a new camera frame is published once and left to the idle
    node; then the same question three times: about the latest frame (prefetched), again (a follow-up: same
    frame, nothing to encode), and with a new image in the request (the full pipeline)."""
    camera = peer.node.create_publisher(Image, "/camera/color/image_raw", 10)
    diagnostics = peer.subscribe(DiagnosticArray, "/diagnostics")
    peer.spin_until(lambda: camera.get_subscription_count() > 0, 30)

    def prefetched() -> int:
        values = [{kv.key: kv.value for kv in d.status[0].values} for d in diagnostics[-1:]]
        return int(values[0]["frames_prefetched"]) if values else 0

    rows = {"prefetched": [], "follow": [], "new": []}
    encoding = {k: [] for k in rows}
    question = "where would I put the clothes"
    for k in range(repeats):
        before = prefetched()
        camera.publish(frame_message(variant(rgb, 2 * k), time.time()))
        if not peer.spin_until(lambda: prefetched() > before, 600):
            raise RuntimeError("the node never prefetched the frame")
        new = frame_message(variant(rgb, 2 * k + 1), time.time())
        for key, image in (("prefetched", None), ("follow", None), ("new", new)):
            res, dt = call(peer, question, image, tokens)
            if not res.success:
                raise RuntimeError(res.message)
            rows[key].append(dt)
            encoding[key].append(res.image_encoding_time)
            peer.spin_until(lambda: False, 0.2)
    med = statistics.median
    follow = med(rows["follow"])
    ratio = med(rows["prefetched"]) / follow
    return ["", f"### one question: on a prefetched frame, as a follow-up, on a new image (median of {repeats})",
            "| question | round trip s | image encoding s (response) | vs follow-up |", "|---|---|---|---|"] + [
        f"| {label} | {med(rows[k]):.3f} | {med(encoding[k]):.3f} | {med(rows[k]) / follow:.2f}x |"
        for k, label in (("prefetched", "first question on the latest frame, prefetched while idle"),
                         ("follow", "the same question again on that frame (follow-up)"),
                         ("new", "the same question with a new image in the request"))] + [
        f"target: prefetched within 1.2x of the follow-up: {'MET' if ratio <= 1.2 else 'NOT MET'} ({ratio:.2f}x)"]


def soak_section(peer, rgb: np.ndarray, frame_message, calls: int, memory_kib, pid: int) -> list[str]:
    """`calls` requests, each with a new 640x480 image; the node's RSS every 100 calls."""
    samples, failures, times = [], 0, []
    t_start = time.monotonic()
    for k in range(1, calls + 1):
        res, dt = call(peer, "where would I put the clothes", frame_message(variant(rgb, k), time.time()), 16)
        failures += not res.success
        times.append(dt)
        if k % 100 == 0 or k == 1:
            samples.append((k, memory_kib(pid)["VmRSS"] / 1024, statistics.median(times[-100:])))
    lines = ["", f"### soak: {calls} calls, a new 640x480 frame each ({time.monotonic() - t_start:.0f} s, "
             f"{failures} failed)", "| calls | node RSS MiB | median round trip s (last 100) |", "|---|---|---|"]
    lines += [f"| {k} | {rss:.0f} | {dt:.3f} |" for k, rss, dt in samples]
    for start in sorted({100, calls // 2}):  # one line when they coincide
        later = [rss for k, rss, _ in samples if k >= start]
        if later:
            lines.append(f"RSS from call {start} on: min {min(later):.0f}, max {max(later):.0f} MiB "
                         f"(spread {max(later) - min(later):.0f} MiB)")
    return lines


def hostile_requests(rgb_msg: Image, frame_message) -> list[tuple[str, ReasonSegment.Request]]:
    """What a client no one here wrote might send."""
    def req(instruction="the cup", image=rgb_msg, tokens=16, **fields):
        r = ReasonSegment.Request(instruction=instruction, max_new_tokens=tokens, **fields)
        if image is not None:
            r.image = image
        return r

    bad_encoding = frame_message(np.zeros((48, 64, 3), np.uint8), 1.0)
    bad_encoding.encoding = "yuv422_weird"
    truncated = frame_message(np.zeros((48, 64, 3), np.uint8), 1.0)
    truncated.data = bytes(truncated.data)[:-7]
    return [
        ("empty instruction", req("")),
        ("whitespace instruction", req(" \n\t ")),
        ("1 MB instruction", req("segment the chair " * 60000)),
        ("max_new_tokens = 4294967295", req(tokens=4294967295)),
        ("1990-character instruction, max_new_tokens 1500", req("where is the cup " * 117, tokens=1500)),
        ("special tokens in the text", req("<image> [SEG] </s> <im_start> the cup")),
        ("NUL and emoji in the text", req("the \x00 cup \U0001F964 please")),
        ("1x5000 image", req(image=frame_message(np.zeros((1, 5000, 3), np.uint8), 1.0))),
        ("5000x1 image", req(image=frame_message(np.zeros((5000, 1, 3), np.uint8), 1.0))),
        ("3x2000 image", req(image=frame_message(np.zeros((3, 2000, 3), np.uint8), 1.0))),
        ("unknown encoding", req(image=bad_encoding)),
        ("truncated image data", req(image=truncated)),
        ("no image and no camera frame yet", req(image=None)),
        ("explain on a 200-token budget", req(tokens=200, explain=True)),
    ]


def hostile_section(peer, rgb_msg: Image, frame_message, alive) -> list[str]:
    lines = ["", "### hostile requests (tiny model)", "| request | answer s | success | message |", "|---|---|---|---|"]
    for label, request in hostile_requests(rgb_msg, frame_message):
        t0 = time.perf_counter()
        res = peer.call(ReasonSegment, SRV, request, 900.0)
        message = res.message.replace("|", "/")
        lines.append(f"| {label} | {time.perf_counter() - t0:.3f} | {res.success} | "
                     f"{message[:150] + ('...' if len(message) > 150 else '')} |")
    lines.append(f"node still running after all of them: {alive()}")
    return lines
