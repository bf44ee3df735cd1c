"""Training runs on a tiny random-weight LISA (its masks mean nothing; the mechanics are what is checked).

* exact resume: stop at step 2, resume to 4 == an uninterrupted 4-step run (LoRA dropout on, 2 micro-batches)
* bfloat16 on a CPU really autocasts; float16 on a CPU is refused with a message
* `lisa-train` as a command (3 steps), then `lisa-export` of that run: LoRA merged, both layouts, same answers
* two processes (torchrun-style launch through `accelerate launch`, gloo) == one process with the combined batch,
  and each rank reads its own data

All runs: training/configs/synthetic_query_learning.yaml's 64 px tiny model with the reference recipe's LoRA.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from distributed_worker import RecordingStream, trainable_state
from lisa_model import LisaSegmenter
from training.config import TrainConfig
from training.lora import unwrap
from training.synthetic import QUERY_KINDS, write_split
from training.train import CHECKPOINT_DIR, Trainer

CONFIG = ROOT / "training" / "configs" / "synthetic_query_learning.yaml"
ANSWER = "Sure, it is [SEG]."  # one template: every sample has the same number of labelled tokens (see distributed)
# The synthetic config trains every weight of a random model; these runs use the reference's LoRA recipe instead.
RECIPE = dict(train_everything=False, probe_weight=0.0, probe_classes=0, epochs=1, steps_per_epoch=20,
              warmup_steps=2, batch_size=2, grad_accumulation_steps=2, eval_every=10 ** 9, save_every=10 ** 9,
              answers=[ANSWER], lr=1e-2)
BIN = Path(sys.executable).parent
# Two processes vs one, tiny model, 3 steps (the first at lr 0), float32, measured: weights differ by at most
# 3.6e-6 (the all-reduce sums in another order; Adam turns small gradient differences into lr-sized ones), where
# ranks that do not synchronise differ by 5.7e-2. Attention key biases are left out: softmax ignores a shift
# shared by all keys, so their true gradient is 0 and Adam moves them by normalised rounding noise alone (up
# to 6e-5 in this run, differing by 3.7e-5 between the two runs).
DISTRIBUTED_ATOL = 2e-5
ZERO_GRADIENT = "k_proj.bias"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    colours = [k for k in QUERY_KINDS if k.startswith("colour:")]
    write_split(root / "train", 16, 64, (2, 3), 0, colours)
    write_split(root / "val", 4, 64, (2, 3), 1, colours)
    return root


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    return TrainConfig.load(CONFIG, **{**RECIPE, "data_root": str(data), "output_dir": str(out), **overrides})


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> float:
    assert a.keys() == b.keys() and a
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, worst
    return worst


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "samples_per_s"} for row in history]


# ----- exact resume ---------------------------------------------------------------------------------------------
def test_resume_is_exact(data, tmp_path):
    whole = Trainer(config(data, tmp_path / "whole"))
    whole.train(max_steps=4)
    expected, expected_history = trainable_state(whole), without_timing(whole.history)

    first = Trainer(config(data, tmp_path / "split"))
    first.train(max_steps=2)
    checkpoint = first.save_checkpoint()
    del first
    resumed = Trainer(config(data, tmp_path / "split"))
    resumed.train(max_steps=4, resume=str(checkpoint))
    assert resumed.step == 4
    assert without_timing(resumed.history) == expected_history  # losses and learning rates, all four steps
    assert_same_weights(trainable_state(resumed), expected)  # bit for bit
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in expected.items())  # LoRA did move


# ----- precision on a CPU ---------------------------------------------------------------------------------------
@pytest.fixture()
def fresh_accelerate_state():
    """accelerate keeps one process-wide state and refuses a second mixed-precision setting: reset around."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bfloat16_on_cpu_autocasts(data, tmp_path, fresh_accelerate_state):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    trainer = Trainer(config(data, tmp_path / "bf16", dtype="bfloat16"))
    assert trainer.accelerator.mixed_precision == "bf16"
    seen = []
    lm = unwrap(trainer.model).model.language_model
    hook = lm.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    history = trainer.train(max_steps=1)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert np.isfinite(history[0]["loss"])
    assert all(p.dtype == torch.float32 for p in trainable_state(trainer).values())  # float32 master weights


def test_float16_on_cpu_is_refused(data, tmp_path, fresh_accelerate_state):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    with pytest.raises(ValueError, match="float16 trains only on CUDA"):
        Trainer(config(data, tmp_path / "fp16", dtype="float16"))


# ----- lisa-train and lisa-export as commands -------------------------------------------------------------------
def overrides(cfg: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in cfg.items()]


@pytest.fixture(scope="module")
def cli_run(data, tmp_path_factory) -> Path:
    """`lisa-train` for 3 steps, as a user runs it."""
    out = tmp_path_factory.mktemp("cli") / "run"
    p = subprocess.run([str(BIN / "lisa-train"), "--config", str(CONFIG), "--output-dir", str(out), "--max-steps",
                        "3", "--set", *overrides({**RECIPE, "data_root": str(data)})],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"model: {out / 'export' / 'ours'}" in p.stdout
    return out


def test_lisa_train_command(cli_run):
    state = json.loads((cli_run / CHECKPOINT_DIR / "trainer_state.json").read_text())
    assert state["step"] == 3 and [h["step"] for h in state["history"]] == [1, 2, 3]
    assert all(np.isfinite(h["loss"]) for h in state["history"])
    saved = json.loads((cli_run / "train_config.json").read_text())
    assert saved["lr"] == RECIPE["lr"] and saved["answers"] == [ANSWER] and saved["train_everything"] is False
    assert list((cli_run / "tensorboard").glob("events.out.tfevents.*"))
    LisaSegmenter.from_pretrained(cli_run / "export" / "ours")  # loadable as it is


def test_lisa_export_merges_lora_into_both_layouts(cli_run, data, tmp_path):
    from training.evaluate import load_items
    from training.export import main as lisa_export

    before = {f: f.stat().st_mtime_ns for f in cli_run.rglob("*")}
    assert lisa_export(["--run", str(cli_run), "--layout", "both", "--dtype", "float32",
                        "--out", str(tmp_path / "export")]) == 0
    assert {f: f.stat().st_mtime_ns for f in cli_run.rglob("*")} == before  # it reads the run, writes nothing there
    ours = LisaSegmenter.from_pretrained(tmp_path / "export" / "ours")
    released = LisaSegmenter.from_pretrained(tmp_path / "export" / "released")  # CLIP from config.json: export/clip
    by_train = LisaSegmenter.from_pretrained(cli_run / "export" / "ours")  # lisa-train's own export
    for other in (released, by_train):
        sa, sb = ours.model.state_dict(), other.model.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    # The run's checkpoint, LoRA still unmerged (peft layers in the model), answers like the merged export.
    trainer = Trainer(TrainConfig.load(None, **json.loads((cli_run / "train_config.json").read_text())))
    trainer.load_checkpoint(cli_run / CHECKPOINT_DIR)
    peft_model = trainer.model
    unmerged = trainer.segmenter_for(unwrap(peft_model).eval())
    item = load_items(data / "val", 1)[0]
    question = f"What is {item.query} in this image? It is [SEG]."  # a typed [SEG] forces a mask
    a = unmerged.segment(item.image, question, 8, parse_special_tokens=True)
    b = ours.segment(item.image, question, 8, parse_special_tokens=True)
    assert a.input_ids == b.input_ids and a.output_ids == b.output_ids and len(a.mask_logits) == len(b.mask_logits)
    merged_error = float(np.abs(a.mask_logits - b.mask_logits).max())
    with peft_model.disable_adapter():  # the same model without its LoRA: what an export that lost it would give
        unmerged.clear_image_cache()
        c = unmerged.segment(item.image, question, 8, parse_special_tokens=True)
    lora_effect = float(np.abs(a.mask_logits - c.mask_logits).max())
    scale = float(np.abs(a.mask_logits).max())
    print(f"mask logits up to {scale:.3g}: merged vs unmerged differ by {merged_error:.2e}, with vs without LoRA "
          f"by {lora_effect:.2e}")
    # Measured: logits up to ~2e2, merged vs unmerged 1.2e-4 (float32 rounding of W + BA), LoRA's effect 4e-2.
    assert merged_error <= 5e-6 * scale < lora_effect / 4


# ----- two processes --------------------------------------------------------------------------------------------
class CombinedRanks:
    """One process standing in for `world` ranks: its batch is the ranks' batches, concatenated."""

    def __init__(self, stream, world: int):
        self.stream, self.world = stream, world

    def batch(self, step: int, micro: int, rank: int, batch_size: int):
        per_rank = batch_size // self.world
        return [s for r in range(self.world) for s in self.stream.batch(step, micro, r, per_rank)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_with_the_combined_batch(data, tmp_path):
    """DDP averages the ranks' gradients; the loss is a per-process mean (as the reference's DeepSpeed run), so
    the equality needs equal label and mask counts per sample: one answer template, one mask each. LoRA dropout
    is off so that the ranks' random masks do not differ."""
    steps = 3
    cfg = config(data, tmp_path / "ddp", lora_dropout=0.0)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict(), default=list))
    out = tmp_path / "out"
    out.mkdir()
    # --multi_gpu makes accelerate start one process per rank through torch.distributed.run; without CUDA the
    # Trainer joins them with gloo. (`accelerate launch --cpu --num_processes 2` starts ONE process.)
    p = subprocess.run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
                        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                        str(free_port()), str(ROOT / "test" / "distributed_worker.py"), str(tmp_path / "cfg.json"),
                        str(out), str(steps)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]

    single = Trainer(config(data, tmp_path / "one", lora_dropout=0.0, batch_size=2 * cfg.batch_size))
    recorder = RecordingStream(single.train_data)  # what the ranks' streams return for (step, micro, rank)
    single.train_data = CombinedRanks(recorder, 2)
    single.train(max_steps=steps)
    for rank, got in enumerate(ranks):
        assert [d["names"] for d in got["drawn"]] == [d["names"] for d in recorder.drawn if d["rank"] == rank]
        assert len(got["drawn"]) == steps * cfg.grad_accumulation_steps
    assert all(a["names"] != b["names"] for a, b in zip(ranks[0]["drawn"], ranks[1]["drawn"]))  # own data each

    two, one = (({k: v for k, v in w.items() if not k.endswith(ZERO_GRADIENT)})
                for w in (load_file(out / "weights.safetensors"), trainable_state(single)))
    worst = assert_same_weights(two, one, DISTRIBUTED_ATOL)
    mean_loss = [(a["loss"] + b["loss"]) / 2 for a, b in zip(ranks[0]["history"], ranks[1]["history"])]
    np.testing.assert_allclose(mean_loss, [h["loss"] for h in single.history], rtol=1e-5)
    assert [h["lr"] for h in ranks[0]["history"]] == [h["lr"] for h in single.history]  # one schedule step per step
    print(f"two processes vs one: max weight difference {worst:.2e} after {steps} steps")
