"""Run by test_training_runs.py under `accelerate launch --cpu --num_processes N` (gloo): the real Trainer for a
few steps. Each rank writes the names of the samples it read (rank<R>.json); the main process also writes the
trainable weights it ended with (weights.safetensors).

    accelerate launch --cpu --num_processes 2 test/distributed_worker.py CONFIG.json OUT_DIR STEPS
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from training.config import TrainConfig  # noqa: E402
from training.lora import unwrap  # noqa: E402
from training.train import Trainer  # noqa: E402


class RecordingStream:
    """The trainer's data stream, unchanged, noting which samples each (step, micro-batch) drew."""

    def __init__(self, stream):
        self.stream, self.drawn = stream, []

    def batch(self, step: int, micro: int, rank: int, batch_size: int):
        samples = self.stream.batch(step, micro, rank, batch_size)
        self.drawn.append({"step": step, "micro": micro, "rank": rank, "names": [s.name for s in samples]})
        return samples


def trainable_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    model = unwrap(trainer.model)
    return {n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def main(config: str, out: str, steps: str) -> None:
    torch.set_num_threads(1)
    cfg = TrainConfig.load(config)
    trainer = Trainer(cfg)
    recorder = RecordingStream(trainer.train_data)
    trainer.train_data = recorder
    trainer.train(max_steps=int(steps))
    acc = trainer.accelerator
    out_dir = Path(out)
    (out_dir / f"rank{acc.process_index}.json").write_text(json.dumps(
        {"world": acc.num_processes, "drawn": recorder.drawn, "history": trainer.history}))
    if acc.is_main_process:
        save_file(trainable_state(trainer), str(out_dir / "weights.safetensors"))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:4])
