"""`lisa-segment` as a user runs it: a real subprocess, real files out."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import FIXTURE, ROOT

IMAGE = FIXTURE / "cases" / "case2_333x500" / "image.png"


def lisa_segment(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lisa_model.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_released_checkpoint_writes_overlay_masks_and_json(tmp_path):
    out = tmp_path / "out"
    p = lisa_segment("--model", str(FIXTURE / "tiny-lisa"), "--vision-tower", str(FIXTURE / "tiny-clip-vit"),
                     "--max-new-tokens", "24", "--out", str(out), str(IMAGE), "Can you segment the dog in this image?")
    assert p.returncode == 0, p.stderr
    expected = json.loads((FIXTURE / "cases" / "case2_333x500" / "expected.json").read_text())
    summary = json.loads((out / "image_result.json").read_text())
    assert summary["output_ids"] == expected["generated_ids"]
    assert summary["num_masks"] == expected["num_seg"] == 5
    overlay = np.asarray(Image.open(out / "image_overlay.png"))
    assert overlay.shape == (500, 333, 3)
    for k in range(5):
        mask = np.asarray(Image.open(out / f"image_mask_{k}.png"))
        reference = np.asarray(Image.open(FIXTURE / "cases" / "case2_333x500" / f"pred_mask_{k}.png"))
        assert mask.shape == (500, 333) and set(np.unique(mask)) <= {0, 255}
        assert ((mask > 0) != (reference > 0)).sum() <= 5
        assert summary["mask_areas"][k] == int((mask > 0).sum())
    assert f"answer: {expected['decoded_generated']}" in p.stdout
    assert {"preprocess", "clip", "sam_encoder", "prefill", "mask_decode"} <= set(summary["timings_s"])


def test_tiny_random_says_its_masks_are_meaningless(tmp_path):
    p = lisa_segment("--model", "tiny-random", "--out", str(tmp_path), str(IMAGE), "where would I put the clothes")
    assert p.returncode == 0, p.stderr
    assert "meaningless" in p.stdout
    assert (tmp_path / "image_overlay.png").is_file()


def test_hub_id_that_cannot_be_downloaded_is_one_line(tmp_path):
    p = lisa_segment("--model", "xinlai/LISA-7B-v1", "--out", str(tmp_path), str(IMAGE), "the dog")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "xinlai/LISA-7B-v1" in p.stderr
    assert "Traceback" not in p.stderr
